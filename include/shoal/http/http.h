// HTTP/1.1 message parsing behind one wrapper around Debian's libhttp-parser
// 2.9.4, made strict: no obs-fold, no Transfer-Encoding together with
// Content-Length, no duplicate Content-Length (libhttp-parser rejects even
// identical repeats, which RFC 9112 section 6.3 permits), no transfer coding
// but a single "chunked", a 64 KiB cap on the header block (libhttp-parser's
// own cap is a process-wide 80 KiB), no CR, NUL or bare LF inside the head
// (every head line must end in CRLF). Pure: no I/O, resumable across
// arbitrary splits. One Parser per direction per connection; not
// thread-safe, not shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace shoal::http {

struct Header {
  std::string name;   // as sent (case kept)
  std::string value;  // as sent, leading/trailing whitespace trimmed
};

// Why a message was rejected; each maps to the status a proxy answers with.
enum class Error {
  None,
  BadMessage,       // 400: malformed request line / status line / header / chunk
  HeadersTooLarge,  // 431: header block over the cap
  AmbiguousLength,  // 400: TE + CL, or duplicate differing Content-Length
  ObsFold,          // 400: obsolete line folding
  BadHeaderValue,   // 400: CR, LF or NUL inside a value
  UnsupportedTE,    // 501: Transfer-Encoding other than chunked (last)
  Callback,         // the handler asked to stop with an error
};
const char* to_string(Error e);
// 400, 431, 501...; 200 for None, 500 for Callback (the handler knows better).
int status_for(Error e);

struct MessageHead {
  // Requests.
  std::string method;  // "GET", "CONNECT"...
  std::string target;  // request-target as sent: origin-form, absolute-form or authority-form
  // Responses.
  int status = 0;
  std::string reason;
  // Both.
  int version_major = 1, version_minor = 1;
  std::vector<Header> headers;  // in order, repeats kept
  // As the headers say, even when the message has no body (a HEAD or 204
  // response): the body's framing is the parser's business.
  int64_t content_length = -1;  // -1 when absent
  bool chunked = false;
  bool keep_alive = true;  // per HTTP version and Connection header

  // First value of a header (case-insensitive name), or nullptr.
  const std::string* find(std::string_view name) const;
  // Every value for a name (case-insensitive), in order.
  std::vector<const std::string*> find_all(std::string_view name) const;
};

// Receives parse events. Return 0 to continue, nonzero to stop with
// Error::Callback. on_message_complete may call Parser::pause() (allowed
// inside callbacks) to stop after this message so the caller can keep
// pipelined bytes for later.
// Each message gives exactly one on_head, then on_body zero or more times,
// then on_message_complete. A 1xx response (100 Continue) is a message of its
// own with no body; the final response follows as the next message. Chunk
// extensions and trailers are parsed and dropped: on_body sees the de-chunked
// payload only.
class Handler {
 public:
  virtual ~Handler() = default;
  virtual int on_head(MessageHead& head) = 0;
  // De-chunked body bytes, pointing into the buffer given to feed(); valid
  // only during the call. Never called with len == 0.
  virtual int on_body(const char* data, size_t len) = 0;
  virtual int on_message_complete() = 0;
};

class Parser {
 public:
  enum class Kind { Request, Response };
  Parser(Kind kind, Handler* handler, size_t max_header_bytes = 64 * 1024);
  ~Parser();
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  // Feeds bytes. Returns how many were consumed; fewer than len when paused
  // (the rest is the caller's to feed again after resume()), after the head
  // of a tunnel (see upgraded(); the rest is tunnel data), or on error (then
  // error() != Error::None and the parser is dead). Returns 0 while paused,
  // upgraded or dead.
  size_t feed(const char* data, size_t len);
  // Tells the parser the peer closed: completes a body delimited by EOF
  // (responses without length) or records BadMessage if a message was cut.
  void feed_eof();
  // pause() may be called from any Handler callback (feed() then returns right
  // after the bytes that produced it) or between feeds.
  void pause();
  void resume();
  bool paused() const;
  // Responses only: the next final (non-1xx) response answers a HEAD, so it
  // has no body whatever its headers say.
  void expect_no_body();
  // Responses only: the next final response answers a CONNECT. A 2xx makes
  // the connection a tunnel right after its head (upgraded() turns true);
  // any other status is an ordinary response with a body.
  void expect_connect_response();
  // True once a message that turns the connection into a tunnel has
  // completed: a CONNECT request, a 2xx answer after
  // expect_connect_response(), or a 101 response with Upgrade. From then on
  // feed() consumes nothing; the bytes after the head belong to the tunnel.
  // Other requests carrying Upgrade are parsed as plain HTTP (a proxy drops
  // Upgrade as hop-by-hop).
  bool upgraded() const;
  Error error() const;
  // Description for logs, e.g. "invalid character in header".
  std::string error_detail() const;
  // True between a message's first byte and its completion.
  bool in_message() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Splits an absolute-form target "http://host:port/path?q" (scheme http or
// https, any case) into parts; false when it is not absolute-form, carries
// userinfo ("user@host"), has an empty or malformed host, or a port that is
// not 1..65535 ("host:" counts as no port). port is 0 when absent. A fragment
// ("#...") is dropped: it never belongs in a request-target.
struct Url {
  std::string scheme;      // "http" or "https", lower-cased
  std::string host, path;  // path includes query; "/" when empty
  uint16_t port = 0;
  bool ipv6_literal = false;  // host was "[...]" (brackets stripped)
};
bool parse_absolute_url(std::string_view target, Url* out);
// Splits "host:port" (authority-form, "[v6]:port" too). false on junk,
// userinfo, missing port, or port 0 / > 65535.
bool parse_authority(std::string_view authority, std::string* host, uint16_t* port, bool* ipv6_literal);

// One range of bytes from a Range header (RFC 9110 section 14.1.2).
struct ByteRange {
  int64_t first = -1;   // "first-" or "first-last"; -1 for a suffix range
  int64_t last = -1;    // inclusive; -1 when open-ended (and for a suffix range)
  int64_t suffix = -1;  // "-suffix": the last suffix bytes; -1 otherwise
};
// Parses a Range value holding exactly one byte range: "bytes=first-last",
// "bytes=first-" or "bytes=-suffix" (unit in any case, whitespace around the
// value). false (and *out reset) for several ranges, another unit, signs or
// spaces inside, a number of more than 18 digits, or last < first: such
// requests go to the origin as they are. Pure; any thread.
bool parse_range(std::string_view value, ByteRange* out);
// Applies a parsed range to an object of len bytes: true with the inclusive
// [*first, *last] to send in a 206 (last clamped to the end, a suffix longer
// than the object meaning all of it); false when it is unsatisfiable (416):
// an empty object, first at or past the end, or a zero-length suffix.
bool resolve_range(const ByteRange& r, uint64_t len, uint64_t* first, uint64_t* last);

// Writes a request/response head as HTTP/1.1, ending with the blank line.
// Header lines are emitted exactly as given (the caller keeps CR/LF out).
std::string serialize_request_head(std::string_view method, std::string_view target,
                                   const std::vector<Header>& headers);
std::string serialize_response_head(int status, std::string_view reason, const std::vector<Header>& headers);
// A complete small response with a text/plain body (body + "\n"),
// Content-Length, and Connection: close unless keep_alive, e.g. for
// 400/403/502 answers. extra headers follow those.
std::string simple_response(int status, std::string_view body, bool keep_alive = false,
                            const std::vector<Header>& extra = {});
// Standard phrase for common codes, "Unknown" for others.
const char* reason_phrase(int status);
// True for hop-by-hop headers a proxy must not forward (Connection,
// Keep-Alive, Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE,
// Trailer, Transfer-Encoding, Upgrade) and for any name listed in Connection.
bool is_hop_by_hop(std::string_view name, const MessageHead& head);
// ASCII case-insensitive equality (header names, schemes, tokens).
bool iequals(std::string_view a, std::string_view b);

}  // namespace shoal::http
