// Parser: libhttp-parser 2.9.4 plus the strictness it lacks.
//
// libhttp-parser validates most of the grammar, frames bodies
// (Content-Length, chunked, until EOF) and hands out pointers into our
// buffer. Debian ships it built with HTTP_PARSER_STRICT=0 (upstream's
// "library" target), which on top of the obs-fold and 80 KiB issues accepts
// any byte where CR/LF belong after a chunk, any letters for "HTTP/" in the
// start line, spaces inside header names and tabs in the target. Two small
// raw-byte scanners close those holes before the bytes reach it:
//   HeadScanner   every head byte: line endings, obs-fold, NUL, our header
//                 cap, the "HTTP/" literal of the start line; also trailers.
//   ChunkScanner  chunked bodies: size lines and the CRLF after each chunk
//                 (chunk data itself is skipped by count, never looked at).
// on_headers_complete then checks header names and the target, and the
// Content-Length/Transfer-Encoding combination.
//
//     feed(data)
//       |
//       v
//   Phase::Head --HeadScanner to end of head--> http_parser_execute
//       |                                          | on_headers_complete
//       |                                          v
//       |             Phase::Body --ChunkScanner if chunked--> execute
//       |                                          | on_message_complete
//       +<--------- internal pause, loop ----------+
//                                                  | CONNECT / 101 / 2xx to CONNECT
//                                                  v
//                                         Phase::Upgraded (consumes nothing)
//
// Pausing libhttp-parser at every on_message_complete is what lets the
// scanners start fresh on the next pipelined message in the same buffer,
// and is also how a user pause() stops consumption exactly after a message.
// A scanner runs ahead of libhttp-parser only within one message; when a
// pause leaves scanned bytes unconsumed, `prescanned` remembers how many of
// the re-fed bytes are already checked.

#include <http_parser.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "shoal/http/http.h"

namespace shoal::http {
namespace {

enum class Phase { Head, Body, Upgraded };

constexpr std::string_view kTransferEncoding = "Transfer-Encoding";

bool is_ows(char c) { return c == ' ' || c == '\t'; }

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

struct ScanResult {
  size_t stop;  // bytes of this call that may go to libhttp-parser
  bool at_end;  // stop is just past the end of the head (or message)
  Error error;  // set when stop is the offending byte
};

// Checks the raw bytes of one message head, across any number of calls,
// for what libhttp-parser accepts but we must not: a line starting with
// SP/HT (obs-fold; libhttp-parser silently joins it to the previous value),
// CR not followed by LF, a bare LF, NUL, a head longer than the cap, and a
// start line without the literal "HTTP/" where it belongs. Counts from the
// first byte of the start line through the LF of the blank line; CR/LF
// before the start line (allowed between pipelined messages) are skipped
// and not counted. In trailer mode there is no start line.
class HeadScanner {
 public:
  void reset(Parser::Kind kind) {
    *this = HeadScanner();
    request_ = kind == Parser::Kind::Request;
  }
  void reset_for_trailers() {
    *this = HeadScanner();
    started_ = true;
    lines_ = 1;
  }

  ScanResult scan(const char* p, size_t n, size_t max_bytes) {
    size_t i = 0;
    if (!started_) {
      while (i < n && (p[i] == '\r' || p[i] == '\n')) ++i;
      if (i == n) return {n, false, Error::None};
      started_ = true;
    }
    while (i < n) {
      if (cr_) {
        // The previous call ended on CR: only LF may follow.
        if (p[i] != '\n') return {i, false, line_error()};
        cr_ = false;
        if (bytes_ + 1 > max_bytes) return {i, false, Error::HeadersTooLarge};
        ++bytes_;
        if (lines_ == 0 && !start_line_ok()) return {i, false, Error::BadMessage};
        ++i;
        if (end_line()) return {i, true, Error::None};
        continue;
      }
      if (line_len_ == 0 && lines_ > 0 && is_ows(p[i])) return {i, false, Error::ObsFold};

      const char* lf = static_cast<const char*>(std::memchr(p + i, '\n', n - i));
      size_t stop = lf ? static_cast<size_t>(lf - p) : n;  // this line's bytes end here
      size_t content_end = stop;
      bool trailing_cr = false;
      // The earliest offending byte is blamed, wherever the buffer ends:
      // libhttp-parser gets every byte before it and may object first, the
      // same whether the input came whole or split.
      size_t bad = SIZE_MAX;
      Error why = line_error();
      if (const char* nul = static_cast<const char*>(std::memchr(p + i, '\0', stop - i)))
        bad = static_cast<size_t>(nul - p);
      if (const char* cr = static_cast<const char*>(std::memchr(p + i, '\r', stop - i))) {
        size_t k = static_cast<size_t>(cr - p);
        if (lf && k + 1 == stop) {
          content_end = k;  // CRLF
        } else if (!lf && k + 1 == n) {
          content_end = k;  // CR at the end of this buffer; LF must come next
          trailing_cr = true;
        } else {
          // Blame the byte after the CR, as when a buffer ends on that CR.
          bad = std::min(bad, k + 1);
        }
      } else if (lf) {
        bad = std::min(bad, stop);  // bare LF
      }
      size_t take = (lf ? stop + 1 : n) - i;
      if (take > max_bytes - bytes_ && i + (max_bytes - bytes_) < bad) {
        // The first byte over the cap, so an exact-cap head passes.
        bad = i + (max_bytes - bytes_);
        why = Error::HeadersTooLarge;
      }
      if (bad != SIZE_MAX) return {bad, false, why};
      if (lines_ == 0) note_start_line(p + i, content_end - i);
      bytes_ += take;
      line_len_ += content_end - i;
      if (lf) {
        if (lines_ == 0 && !start_line_ok()) return {stop, false, Error::BadMessage};
        i += take;
        if (end_line()) return {i, true, Error::None};
      } else {
        i += take;
        cr_ = trailing_cr;
      }
    }
    return {n, false, Error::None};
  }

 private:
  // A complete line was seen; true when it was the blank line ending the head.
  bool end_line() {
    if (line_len_ == 0) return true;
    ++lines_;
    line_len_ = 0;
    return false;
  }
  Error line_error() const { return lines_ == 0 ? Error::BadMessage : Error::BadHeaderValue; }

  // Keeps the first 5 and last 9 bytes of the start line, the only places
  // "HTTP/x.y" may be.
  void note_start_line(const char* s, size_t k) {
    for (size_t j = 0; j < k && first_len_ < sizeof first_; ++j) first_[first_len_++] = s[j];
    if (k >= sizeof last_) {
      std::memcpy(last_, s + k - sizeof last_, sizeof last_);
      last_len_ = sizeof last_;
    } else {
      size_t keep = std::min(last_len_, sizeof last_ - k);
      std::memmove(last_, last_ + last_len_ - keep, keep);
      std::memcpy(last_ + keep, s, k);
      last_len_ = keep + k;
    }
  }
  // Requests end in " HTTP/d.d", responses start with "HTTP/"; the
  // non-strict libhttp-parser checks only the 'H' and the digits.
  bool start_line_ok() const {
    if (!request_) return first_len_ == 5 && std::memcmp(first_, "HTTP/", 5) == 0;
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    return last_len_ == 9 && std::memcmp(last_, " HTTP/", 6) == 0 && digit(last_[6]) && last_[7] == '.' &&
           digit(last_[8]);
  }

  size_t bytes_ = 0;      // head bytes so far (start line onwards)
  size_t line_len_ = 0;   // bytes of the current line, CR/LF excluded
  size_t lines_ = 0;      // complete lines so far (0 while in the start line)
  bool started_ = false;  // first byte of the start line seen
  bool cr_ = false;       // last byte seen was a CR ending a line
  bool request_ = true;
  char first_[5] = {};
  size_t first_len_ = 0;
  char last_[9] = {};
  size_t last_len_ = 0;
};

// Checks chunked framing byte-exactly: 1*HEXDIG, an optional extension
// (starting with ';' or whitespace, no CR/LF/NUL inside), CRLF, that many
// data bytes, CRLF; after the zero-size chunk, trailer lines as in a head.
// Stops just past the end of the message.
class ChunkScanner {
 public:
  void reset() { *this = ChunkScanner(); }

  ScanResult scan(const char* p, size_t n, size_t max_trailer_bytes) {
    size_t i = 0;
    while (i < n) {
      char c = p[i];
      switch (st_) {
        case St::Size: {
          int v = hex(c);
          if (v >= 0) {
            // 15 hex digits (2^60 bytes) is plenty and cannot overflow;
            // zero-padding past that is refused rather than parsed.
            if (digits_ == 15) return {i, false, Error::BadMessage};
            size_ = size_ * 16 + static_cast<uint64_t>(v);
            ++digits_;
            ++i;
          } else if (digits_ == 0) {
            return {i, false, Error::BadMessage};
          } else if (c == '\r') {
            st_ = St::SizeLf;
            ++i;
          } else if (c == ';' || is_ows(c)) {
            st_ = St::Ext;
            ++i;
          } else {
            return {i, false, Error::BadMessage};
          }
          break;
        }
        case St::Ext: {
          const char* cr = static_cast<const char*>(std::memchr(p + i, '\r', n - i));
          size_t end = cr ? static_cast<size_t>(cr - p) : n;
          if (const char* bad = find_lf_or_nul(p + i, end - i))
            return {static_cast<size_t>(bad - p), false, Error::BadMessage};
          i = end;
          if (cr) {
            st_ = St::SizeLf;
            ++i;
          }
          break;
        }
        case St::SizeLf:
          if (c != '\n') return {i, false, Error::BadMessage};
          ++i;
          if (size_ == 0) {
            st_ = St::Trailers;
            trailers_.reset_for_trailers();
          } else {
            st_ = St::Data;
          }
          break;
        case St::Data: {
          uint64_t take = std::min<uint64_t>(size_, n - i);
          i += static_cast<size_t>(take);
          size_ -= take;
          if (size_ == 0) st_ = St::DataCr;
          break;
        }
        case St::DataCr:
          if (c != '\r') return {i, false, Error::BadMessage};
          st_ = St::DataLf;
          ++i;
          break;
        case St::DataLf:
          if (c != '\n') return {i, false, Error::BadMessage};
          st_ = St::Size;
          digits_ = 0;
          ++i;
          break;
        case St::Trailers: {
          ScanResult r = trailers_.scan(p + i, n - i, max_trailer_bytes);
          return {i + r.stop, r.at_end, r.error};
        }
      }
    }
    return {n, false, Error::None};
  }

 private:
  enum class St { Size, Ext, SizeLf, Data, DataCr, DataLf, Trailers };
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static const char* find_lf_or_nul(const char* s, size_t k) {
    for (size_t j = 0; j < k; ++j)
      if (s[j] == '\n' || s[j] == '\0') return s + j;
    return nullptr;
  }

  St st_ = St::Size;
  uint64_t size_ = 0;
  size_t digits_ = 0;
  HeadScanner trailers_;
};

// Log text for a scanner verdict; to_string(e) already names the class.
std::string scan_detail(Error e, bool in_chunks, size_t max_bytes) {
  switch (e) {
    case Error::HeadersTooLarge:
      return (in_chunks ? "trailers over " : "header block over ") + std::to_string(max_bytes) + " bytes";
    case Error::ObsFold:
      return "line starting with whitespace (obs-fold)";
    case Error::BadHeaderValue:
      return "CR not followed by LF, bare LF or NUL in a field line";
    default:
      return in_chunks ? "malformed chunk size line or missing CRLF after chunk data"
                       : "malformed start line (line ending, NUL or HTTP-version)";
  }
}

// RFC 9110 tchar: what a header name may be made of. libhttp-parser built
// non-strict lets SP through, so "Content-Length : 5" would frame the body
// while our header list says otherwise.
bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
    if (std::strchr("!#$%&'*+-.^_`|~", c) && c != '\0') continue;
    return false;
  }
  return true;
}

// No CTL, SP or DEL in a request-target (non-strict libhttp-parser lets HT
// and FF through); bytes >= 0x80 pass, as most servers allow them.
bool target_ok(std::string_view t) {
  if (t.empty()) return false;
  for (char c : t) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return false;
  }
  return true;
}

Error map_errno(http_errno e) {
  switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH:  // duplicate CL, or TE with CL
      return Error::AmbiguousLength;
    case HPE_HEADER_OVERFLOW:
      return Error::HeadersTooLarge;
    case HPE_INVALID_TRANSFER_ENCODING:
      return Error::UnsupportedTE;
    case HPE_CB_message_begin:
    case HPE_CB_url:
    case HPE_CB_header_field:
    case HPE_CB_header_value:
    case HPE_CB_headers_complete:
    case HPE_CB_body:
    case HPE_CB_message_complete:
    case HPE_CB_status:
    case HPE_CB_chunk_header:
    case HPE_CB_chunk_complete:
      return Error::Callback;
    default:
      return Error::BadMessage;
  }
}

// Transfer-Encoding across every TE line must be exactly one "chunked":
// Shoal decodes no other transfer coding, and de-chunking "gzip, chunked"
// would silently strip the gzip layer. RFC 9112 section 6.1 answers 501.
bool te_is_plain_chunked(const MessageHead& head, bool* present) {
  size_t codings = 0;
  bool chunked = false;
  *present = false;
  for (const Header& h : head.headers) {
    if (!iequals(h.name, "Transfer-Encoding")) continue;
    *present = true;
    std::string_view v = h.value;
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view tok = trim_ows(v.substr(0, comma));
      v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      if (tok.empty()) continue;  // empty list elements are allowed and ignored
      ++codings;
      chunked = iequals(tok, "chunked");
    }
  }
  return codings == 1 && chunked;
}

}  // namespace

struct Parser::Impl {
  http_parser hp{};
  Handler* handler = nullptr;
  Kind kind = Kind::Request;
  size_t max_header_bytes = 0;
  HeadScanner scanner;
  ChunkScanner chunks;
  Phase phase = Phase::Head;
  bool chunked_body = false;    // the current message's body is chunked
  size_t prescanned = 0;        // re-fed bytes a scanner already checked
  Error pending = Error::None;  // scanner verdict due once those are consumed
  std::string pending_detail;
  uint64_t completed = 0;  // messages completed so far
  MessageHead head;
  bool last_was_value = false;  // header callbacks: a value fragment came last
  bool user_paused = false;
  bool executing = false;  // inside http_parser_execute, so callbacks run
  bool in_message = false;
  bool no_body_next = false;
  bool connect_next = false;
  bool tunnel_after = false;  // the current message turns into a tunnel
  Error error = Error::None;
  std::string detail;

  static const http_parser_settings kSettings;

  static Impl& of(http_parser* p) { return *static_cast<Impl*>(p->data); }

  int fail(Error e, std::string why) {
    if (error == Error::None) {
      error = e;
      detail = std::move(why);
    }
    return -1;
  }

  static int on_message_begin(http_parser* p) {
    Impl& m = of(p);
    // Clear in place so strings and the vector keep their capacity.
    m.head.method.clear();
    m.head.target.clear();
    m.head.status = 0;
    m.head.reason.clear();
    m.head.headers.clear();
    m.head.content_length = -1;
    m.head.chunked = false;
    m.head.keep_alive = true;
    m.last_was_value = false;
    m.tunnel_after = false;
    m.in_message = true;
    return 0;
  }

  static int on_url(http_parser* p, const char* at, size_t len) {
    of(p).head.target.append(at, len);
    return 0;
  }

  static int on_status(http_parser* p, const char* at, size_t len) {
    of(p).head.reason.append(at, len);
    return 0;
  }

  static int on_header_field(http_parser* p, const char* at, size_t len) {
    Impl& m = of(p);
    if (m.phase != Phase::Head) return 0;  // trailers are dropped
    if (m.last_was_value || m.head.headers.empty()) {
      m.head.headers.emplace_back();
      m.last_was_value = false;
    }
    m.head.headers.back().name.append(at, len);
    return 0;
  }

  static int on_header_value(http_parser* p, const char* at, size_t len) {
    Impl& m = of(p);
    if (m.phase != Phase::Head) return 0;
    if (m.head.headers.empty()) return m.fail(Error::BadMessage, "header value without a name");
    m.head.headers.back().value.append(at, len);
    m.last_was_value = true;
    return 0;
  }

  // Returns 0 (body as framed), 1 (no body) or 2 (no body, tunnel follows),
  // as libhttp-parser reads on_headers_complete's result.
  static int on_headers_complete(http_parser* p) {
    Impl& m = of(p);
    m.phase = Phase::Body;
    MessageHead& h = m.head;
    h.version_major = p->http_major;
    h.version_minor = p->http_minor;
    if (h.version_major != 1) return m.fail(Error::BadMessage, "unsupported HTTP version");
    for (Header& hd : h.headers) {
      if (!is_token(hd.name)) return m.fail(Error::BadMessage, "invalid header name");
      // libhttp-parser takes any name that starts with Transfer-Encoding
      // ("Transfer-Encoding-X") for Transfer-Encoding and frames the body
      // by it (a request then fails only after on_head), while the list
      // above would say there is none: refuse rather than disagree.
      if (hd.name.size() > kTransferEncoding.size() &&
          iequals(std::string_view(hd.name).substr(0, kTransferEncoding.size()), kTransferEncoding))
        return m.fail(Error::BadMessage, "header name that extends Transfer-Encoding");
      std::string_view t = trim_ows(hd.value);
      if (t.size() != hd.value.size()) hd.value.assign(t.data(), t.size());
    }
    if (m.kind == Kind::Request && !target_ok(h.target))
      return m.fail(Error::BadMessage, "invalid request target");

    bool te_present = false;
    bool te_ok = te_is_plain_chunked(h, &te_present);
    if (te_present && !te_ok) return m.fail(Error::UnsupportedTE, "transfer coding other than chunked");
    bool chunked = (p->flags & F_CHUNKED) != 0;
    if (te_present != chunked) return m.fail(Error::BadMessage, "unparsable Transfer-Encoding");
    h.chunked = chunked;
    if (p->flags & F_CONTENTLENGTH) {
      if (p->content_length > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return m.fail(Error::BadMessage, "Content-Length out of range");
      h.content_length = static_cast<int64_t>(p->content_length);
    }

    int ret = 0;
    if (m.kind == Kind::Request) {
      h.method = http_method_str(static_cast<http_method>(p->method));
      m.tunnel_after = p->method == HTTP_CONNECT;
    } else {
      int st = static_cast<int>(p->status_code);
      // libhttp-parser takes 1 to 3 digits; anything outside 100..599
      // (RFC 9110 section 15) would pass below for an interim 1xx
      // answer and be written back as a status line no client reads.
      if (st < 100 || st > 599) return m.fail(Error::BadMessage, "status code outside 100-599");
      h.status = st;
      // 1xx, 204 and 304 never carry a body (RFC 9112 section 6.3), but
      // libhttp-parser would read one if Content-Length says so.
      if (st < 200 || st == 204 || st == 304) ret = 1;
      if (st == 101 && p->upgrade) {
        m.tunnel_after = true;
        ret = 2;
      }
      if (st >= 200) {
        if (m.no_body_next) ret = 1;
        if (m.connect_next && st < 300) {
          m.tunnel_after = true;
          ret = 2;
        }
        m.no_body_next = false;
        m.connect_next = false;
      }
    }
    // Set the flag libhttp-parser would set from our result now, so that
    // http_should_keep_alive does not take a bodiless response as
    // delimited by EOF.
    if (ret != 0) p->flags = static_cast<uint8_t>(p->flags | F_SKIPBODY);
    h.keep_alive = http_should_keep_alive(p) != 0;
    m.chunked_body = chunked && ret == 0;
    m.chunks.reset();

    if (m.handler->on_head(h) != 0) return m.fail(Error::Callback, "on_head refused the message");
    return ret;
  }

  static int on_body(http_parser* p, const char* at, size_t len) {
    Impl& m = of(p);
    if (len == 0) return 0;
    if (m.handler->on_body(at, len) != 0) return m.fail(Error::Callback, "on_body refused the data");
    return 0;
  }

  static int on_message_complete(http_parser* p) {
    Impl& m = of(p);
    m.in_message = false;
    m.phase = m.tunnel_after ? Phase::Upgraded : Phase::Head;
    m.scanner.reset(m.kind);
    m.chunked_body = false;
    ++m.completed;
    if (m.handler->on_message_complete() != 0) return m.fail(Error::Callback, "on_message_complete failed");
    // Hand control back to feed() after every message; see the top of file.
    if (HTTP_PARSER_ERRNO(p) == HPE_OK) http_parser_pause(p, 1);
    return 0;
  }
};

const http_parser_settings Parser::Impl::kSettings = {
    &Parser::Impl::on_message_begin,
    &Parser::Impl::on_url,
    &Parser::Impl::on_status,
    &Parser::Impl::on_header_field,
    &Parser::Impl::on_header_value,
    &Parser::Impl::on_headers_complete,
    &Parser::Impl::on_body,
    &Parser::Impl::on_message_complete,
    nullptr,
    nullptr,
};

Parser::Parser(Kind kind, Handler* handler, size_t max_header_bytes) : impl_(new Impl) {
  Impl& m = *impl_;
  m.handler = handler;
  m.kind = kind;
  m.max_header_bytes = max_header_bytes;
  m.scanner.reset(kind);
  http_parser_init(&m.hp, kind == Kind::Request ? HTTP_REQUEST : HTTP_RESPONSE);
  m.hp.data = &m;
}

Parser::~Parser() = default;

size_t Parser::feed(const char* data, size_t len) {
  Impl& m = *impl_;
  if (m.error != Error::None || m.user_paused || m.phase == Phase::Upgraded) return 0;
  size_t pos = 0;
  while (pos < len) {
    size_t avail = len - pos;
    ScanResult scan{avail, false, Error::None};
    bool scanned = false;
    if (m.prescanned > 0) {
      scan.stop = std::min(m.prescanned, avail);
    } else if (m.phase == Phase::Head) {
      scan = m.scanner.scan(data + pos, avail, m.max_header_bytes);
      scanned = true;
    } else if (m.chunked_body) {
      scan = m.chunks.scan(data + pos, avail, m.max_header_bytes);
      scanned = true;
    }
    const Phase before = m.phase;
    const uint64_t completed_before = m.completed;
    size_t n = 0;
    // Never call execute with 0 bytes: to libhttp-parser that means EOF.
    if (scan.stop > 0) {
      m.executing = true;
      n = http_parser_execute(&m.hp, &Impl::kSettings, data + pos, scan.stop);
      m.executing = false;
    }
    pos += n;

    http_errno e = HTTP_PARSER_ERRNO(&m.hp);
    if (e != HPE_OK && e != HPE_PAUSED) {
      m.fail(map_errno(e), http_errno_description(e));
      return pos;
    }
    const bool paused = e == HPE_PAUSED;
    if (paused) http_parser_pause(&m.hp, 0);
    if (scanned) {
      // The scanner and libhttp-parser must agree on where a message ends:
      // never guess at framing.
      const bool completed = m.completed != completed_before;
      const bool at_end = scan.at_end && n == scan.stop;
      if (completed ? !at_end : (at_end && !paused && m.phase == before)) {
        m.fail(Error::BadMessage, "parser disagreement on message framing");
        return pos;
      }
      const bool in_chunks = before == Phase::Body;
      if (n < scan.stop) {
        // Paused short of where the scanner got to (or of the byte it
        // blames): those bytes come back in a later feed.
        m.prescanned = scan.stop - n;
        m.pending = scan.error;
        if (scan.error != Error::None)
          m.pending_detail = scan_detail(scan.error, in_chunks, m.max_header_bytes);
      } else if (scan.error != Error::None) {
        m.fail(scan.error, scan_detail(scan.error, in_chunks, m.max_header_bytes));
        return pos;
      }
    } else if (m.prescanned > 0) {
      m.prescanned -= std::min(m.prescanned, n);
      if (m.prescanned == 0 && m.pending != Error::None) {
        m.fail(m.pending, m.pending_detail);
        return pos;
      }
    }
    if (!paused && n < scan.stop) {
      m.fail(Error::BadMessage, "parser stopped short");
      return pos;
    }
    if (m.user_paused || m.phase == Phase::Upgraded) return pos;
  }
  return pos;
}

void Parser::feed_eof() {
  Impl& m = *impl_;
  if (m.error != Error::None || m.phase == Phase::Upgraded) return;
  static const char kNone = 0;
  m.executing = true;
  http_parser_execute(&m.hp, &Impl::kSettings, &kNone, 0);
  m.executing = false;
  http_errno e = HTTP_PARSER_ERRNO(&m.hp);
  if (e == HPE_PAUSED) {
    http_parser_pause(&m.hp, 0);
  } else if (e != HPE_OK) {
    m.fail(e == HPE_INVALID_EOF_STATE ? Error::BadMessage : map_errno(e), http_errno_description(e));
  }
}

void Parser::pause() {
  Impl& m = *impl_;
  m.user_paused = true;
  // Inside a callback, make http_parser_execute return right after the
  // current event; feed() clears libhttp-parser's pause once it has, so
  // between feeds only user_paused says we are paused.
  if (m.executing && HTTP_PARSER_ERRNO(&m.hp) == HPE_OK) http_parser_pause(&m.hp, 1);
}

void Parser::resume() { impl_->user_paused = false; }

bool Parser::paused() const { return impl_->user_paused; }
void Parser::expect_no_body() { impl_->no_body_next = true; }
void Parser::expect_connect_response() { impl_->connect_next = true; }
bool Parser::upgraded() const { return impl_->phase == Phase::Upgraded; }
Error Parser::error() const { return impl_->error; }
std::string Parser::error_detail() const { return impl_->detail; }
bool Parser::in_message() const { return impl_->in_message; }

}  // namespace shoal::http
