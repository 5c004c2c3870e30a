// Conn: one client connection on the explicit proxy listener or the
// transparent one, from accept to the last close callback. Internal to the
// proxy module.
//
//            accept
//              │
//              ▼
//   ┌──── Http (plain HTTP/1.1 from the client) ◄────────────────┐
//   │          │ CONNECT host:port                              │ keep-alive
//   │          ├── not hijacked ──► Dialing ──► Tunnel ──► close │
//   │          └── hijacked ──► "200" ──► PeekHello ─┬─ not TLS ─► Dialing ─► Tunnel
//   │                                                ▼
//   │                               Minting (leaf cache miss, thread pool)
//   │                                                ▼
//   │                               Handshake ──► HttpTls (decrypted HTTP/1.1)
//   │ transparent accept: original destination from the redirect backend,
//   │   then PeekHello (2 s): SNI:port (or the address) a hijack host ──►
//   │   Minting/Handshake as above; anything else ──► Dialing the original
//   │   address ──► Tunnel (never a re-resolution of the SNI)
//   │ absolute-URI or /v2/… request (both Http and HttpTls):
//   └─► exchange: rule → route (direct | p2p) → upstream (reused per
//       host:port:tls) → request head/body up, response back, then the next
//       request (keep-alive) or close. A bodiless GET/HEAD/OPTIONS whose
//       reused upstream closes before answering is sent once more on a new
//       upstream (the origin's keep-alive timeout raced it).
//
// Ownership: the Worker's intrusive list holds every live Conn. A Conn frees
// itself when its client handle, its timer and every Upstream handle it
// closed have run their close callbacks and no thread-pool job (leaf
// minting) refers to it. Upstream objects are owned by the Conn until
// released; a released Upstream frees itself after its own close callback
// and never calls back into the Conn.
// Backpressure: one uv_write in flight per side; a side is read only while
// the side its bytes go to has nothing queued, so memory per connection is
// bounded by a few 64 KiB buffers plus the TLS contexts, whatever the size
// of the object in transit.
#pragma once

#include <uv.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "shoal/http/http.h"
#include "shoal/proxy/runtime.h"
#include "shoal/proxy/worker.h"
#include "shoal/task/piece_hasher.h"
#include "shoal/tls/client_hello.h"
#include "shoal/tls/session.h"
#include "splice.h"
#include "upstream.h"

namespace shoal::proxy {

class Conn : public http::Handler, public UpstreamOwner {
 public:
  enum class Mode { Http, Dialing, PeekHello, Minting, Handshake, HttpTls, Tunnel, Closing };

  Conn(Worker& w, std::shared_ptr<const Runtime> rt);
  ~Conn() override;
  // Takes the accepted socket; returns false (and the Conn frees itself) on
  // failure. transparent: accepted on the transparent listener.
  bool start(uv_stream_t* server, bool transparent);
  void drain();          // daemon stops: close when idle, no more keep-alive
  void abort();          // reset now
  Conn* next = nullptr;  // Worker's intrusive list
  Conn* prev = nullptr;

  // http::Handler for the client's requests.
  int on_head(http::MessageHead& head) override;
  int on_body(const char* data, size_t len) override;
  int on_message_complete() override;

  // UpstreamOwner.
  void upstream_ready(Upstream* u) override;
  void upstream_failed(Upstream* u, const std::string& why) override;
  void upstream_data(Upstream* u, const char* data, size_t n) override;
  void upstream_eof(Upstream* u) override;
  void upstream_written(Upstream* u, int status) override;
  // A write on side s finished (the client's, or the upstream's).
  void write_done(Side* s, int status);
  void handle_closed();

 private:
  struct ResponseHandler;  // http::Handler for the upstream's responses
  friend struct ResponseHandler;
  friend struct Upstream;

  struct Exchange {
    bool active = false;
    std::string method, host, path, url, route;
    uint16_t port = 0;
    bool https = false;
    bool req_chunked = false, req_done = false;
    bool head_only = false;
    bool client_keep_alive = true;
    bool resp_head_sent = false, resp_done = false;
    bool out_chunked = false, out_until_close = false;
    bool informational = false;
    bool http10 = false;
    bool up_keep_alive = true;
    bool logged = false;
    // A GET/HEAD/OPTIONS without a body sent on a reused origin connection
    // is sent again, once, on a fresh one if that connection closes before
    // any of the response arrives: the origin's keep-alive timeout raced
    // the request (RFC 9110 section 9.2.2).
    std::string retry_head;  // the serialized request head; empty: no retry
    bool retried = false;
    // Task engine (route p2p GETs).
    std::vector<http::Header> req_headers;  // as forwarded, for redirects and fallbacks
    bool tee = false;                       // this connection fetches the task from the origin
    bool up_done = false;                   // the origin's response has been read in full
    bool redirecting = false;               // the origin's answer is a redirect Shoal follows
    std::string location;
    int redirects = 0;
    std::string log_host, log_path;  // what the client asked for, once redirects were followed
    uint16_t log_port = 0;
    std::string source;  // where the body came from: origin, joined, store
    // A single Range: bytes=first-last, first- (last = -1) or -suffix.
    bool range = false;
    int64_t range_first = -1, range_last = -1, range_suffix = -1;
    bool resume = false;  // fetching the rest of a failed task's bytes from the origin
    uint64_t resume_from = 0;
    // The owner's origin connection broke (or stalled) mid-body: a Range
    // request for the rest is out and its head not yet checked.
    bool tee_resume = false;
    bool auth_check = false;  // a HEAD with the client's credentials is out
    int auth_status = 0;
    // The HEAD is the P2P owner's: its answer (length, headers) starts the
    // piece download.
    bool p2p_head = false;
    int64_t head_length = -1;
    std::vector<http::Header> head_headers;
    // Where the HEAD goes now: it follows redirects as a GET would.
    std::string head_host, head_path;
    uint16_t head_port = 0;
    bool head_https = true;
    std::vector<http::Header> head_req;
    int head_redirects = 0;
    int task_attempts = 0;  // fallbacks to a fresh task for this request
    std::string auth_key;
    int status = 0;
    uint64_t resp_bytes = 0;
    uint64_t start_ms = 0;
  };

  // The owner's side of a task: the origin's body goes into the store.
  struct Tee {
    ~Tee();
    std::shared_ptr<task::ActiveTask> task;
    std::unique_ptr<task::Writer> writer;
    std::vector<char> pending;   // body bytes waiting for the next write job
    std::vector<char> inflight;  // bytes the running job writes
    // The last chunk a job stored, at [recent_off, recent_off + size): the
    // owner's client, when it keeps up, is served from here rather than
    // reading back from disk what was just written.
    std::vector<char> recent;
    uint64_t recent_off = 0;
    bool job = false;  // a write or finalize job is in the thread pool
    bool body_done = false, finalized = false;
    uint64_t written = 0, length = 0;
    uint32_t piece_size = 0;
    std::unique_ptr<task::PieceHasher> hasher;  // whole object and pieces, one pass
    task::ActiveTask::Headers headers;
    std::string url;
    uint64_t start_ms = 0;
    int error = 0;
    std::string err;
    bool mismatch = false;
    std::string got_digest;
    // Resuming after the origin broke off (tee_resume): body bytes received
    // so far, where the last resume started, tries without progress since,
    // and the object's strong ETag for If-Range ("" if it had none).
    uint64_t received = 0, resume_mark = 0;
    int resume_tries = 0;
    std::string etag;
  };
  // A client being served from a task's file (the owner's client too).
  struct Serve {
    bool active = false;
    std::shared_ptr<task::ActiveTask> task;  // null for a stored task
    int fd = -1;                             // a stored task's data; ours to close
    std::shared_ptr<const std::string> mem;  // a small stored object's bytes (SmallCache)
    bool pinned = false;                     // the stored task is pinned against GC
    uint64_t length = 0, offset = 0;
    uint64_t end = 0;  // one past the last byte to send (the range's end)
    bool head_sent = false, reading = false;
    uint64_t sub = 0;
    // File reads land here; allocated on the first read, uninitialized
    // (a store hit served from memory never needs it). Aligned, and reads
    // are whole aligned blocks: a task still downloading may be on an
    // O_DIRECT fd (task::kDirectAlign). skip: bytes before serve offset.
    struct FreeDeleter {
      void operator()(char* p) const { std::free(p); }
    };
    std::unique_ptr<char, FreeDeleter> buf;
    size_t skip = 0, want = 0;
    uv_fs_t req{};
    task::ActiveTask::Headers headers;
    std::string id;
  };

  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_client_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_timer(uv_timer_t* t);

  void client_bytes(const char* data, size_t n);
  void client_plain(const char* data, size_t n);
  void drain_client_tls();
  void client_eof();
  void handle_connect_target();
  // peer: the client's address from getpeername(), null if that failed.
  void transparent_begin(const sockaddr_storage* peer);
  void transparent_splice(const char* why);
  void try_peek();
  void begin_hijack();
  void start_handshake(std::shared_ptr<const tls::Leaf> leaf);
  void continue_handshake();
  bool start_exchange(http::MessageHead& head);
  Upstream* get_upstream(const std::string& host, uint16_t port, bool use_tls);
  void send_upstream(const char* data, size_t n);
  void send_client(const char* data, size_t n);
  void send_client_body(const char* data, size_t n);
  void finish_exchange();
  void after_exchange();
  void graceful_close();
  // Task engine (conn_task.cpp).
  bool start_task(const std::string& url);
  // Reads a Range header into ex_; false when it is not one range of bytes
  // (multi-range and other units are forwarded to the origin instead).
  bool parse_range(const std::string& value);
  void serve_begin();
  void serve_pump();
  void serve_done();
  void serve_stop();
  void serve_fallback();
  void serve_resume();
  void tee_body(const char* data, size_t n);
  void tee_kick();
  void tee_streaming(const http::MessageHead& head);
  void tee_abandon(const std::string& why);
  void tee_finished();
  void tee_store_failed();
  bool tee_resume(const std::string& why);
  int tee_resume_head(const http::MessageHead& head);
  void drain_pump();
  bool drain_ = false;  // the owner's store failed: finish the client from file, memory, then origin
  void follow_redirect();
  void auth_check_begin();
  void auth_checked(bool timed_out);
  void p2p_head_begin();
  void p2p_head_send();
  bool p2p_head_follow();
  void p2p_head_abandon(const std::string& why);
  void p2p_head_done(bool timed_out);
  void owner_fetch_whole();
  bool redirect_pending_ = false;
  bool auth_pending_ = false;
  std::unique_ptr<Tee> tee_;
  Serve serve_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // weak_ptrs tell posted callbacks we are gone
  void resp_parse(Upstream* u, const char* data, size_t n);
  void start_tunnel();
  void maybe_splice();
  void respond_error(int status, const std::string& msg, const std::vector<http::Header>& extra = {});
  void fail_exchange(int status, const std::string& why);
  bool response_not_started(const Upstream* u) const;
  bool retry_exchange(const std::string& why);
  void log_exchange();
  void update_reads();
  void flush(Side& s);
  void maybe_shutdown(Side& s);
  void close_all(bool reset);
  void close_side(Side& s, bool reset);
  void touch();
  void arm_timer(double seconds);
  void set_deadline(double seconds);
  void restart_timer();
  bool check_auth(const http::MessageHead& head);
  void maybe_free();
  uint64_t now_ms() const;

  Worker& w_;
  std::shared_ptr<const Runtime> rt_;
  Mode mode_ = Mode::Http;
  Side client_;
  uv_timer_t timer_{};
  bool timer_inited_ = false;
  int open_handles_ = 0;
  int pending_jobs_ = 0;
  bool closing_ = false;
  bool admitted_ = false;
  bool close_after_flush_ = false;
  bool draining_ = false;
  bool after_exchange_pending_ = false;
  bool resume_parser_pending_ = false;
  std::unique_ptr<http::Parser> req_parser_;  // replaced when TLS starts inside CONNECT
  std::unique_ptr<ResponseHandler> resp_handler_;
  std::vector<char> client_pending_;  // plaintext from the client not yet parsed
  std::vector<char> hello_;           // bytes after CONNECT, before TLS starts
  Upstream* up_ = nullptr;
  // A plain tunnel's bytes once it carries nothing else (see splice.h);
  // closed in close_all, counted in open_handles_ until its dups close.
  Splice* splice_ = nullptr;
  bool spliced_ = false;  // for the log: the tunnel went over to splice
  Exchange ex_;
  // CONNECT target.
  std::string connect_host_;
  uint16_t connect_port_ = 0;
  uint64_t connect_start_ms_ = 0;
  bool hijacked_ = false;
  bool connect_requested_ = false;
  bool cb_abort_ = false;  // a callback already answered the client
  int connect_status_ = 0;
  std::string connect_error_;
  std::string connect_target_;
  std::string sni_;
  std::string mint_key_;  // set while waiting in Worker's mint-waiter list
  // Transparent interception: the connection's original destination (an
  // IP literal), where every origin connection for connect_host_ goes.
  bool transparent_ = false;
  std::string dial_ip_;
  uint32_t orig_tgid_ = 0;
  uint64_t orig_cgroup_ = 0;
  double timeout_s_ = 0;
  uint64_t last_activity_ms_ = 0;
  // timeouts.header as a deadline that activity does not push back: a
  // request head (or, after CONNECT to a hijacked host, the TLS handshake)
  // must be complete by then, however slowly its bytes trickle in. 0: none.
  uint64_t deadline_ms_ = 0;
  std::string peer_addr_;
};

}  // namespace shoal::proxy
