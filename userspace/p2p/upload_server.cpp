// The peer upload server (see upload_server.h for the contract).
//
// One heap Conn per accepted connection, on the server's loop. It embeds its
// TCP handle and a timer, and frees itself once both are closed and no file
// read is in flight (a read runs in the thread pool and writes into the
// Conn's buffer, so the Conn must outlive it).
//
//           bytes          request complete          slot + piece held
//   Idle ---------> Head ------------------> (verify, path, slots, open)
//    ^  (60 s idle)  | (30 s for the head)        |             |
//    |               v                            | refused     | 200
//    |             close                          v             v
//    +------------------------------------------ Reply        Send
//    |  response written, keep-alive                            |
//    +----------------------------------------------------------+
//
// Send moves the piece in steps (Server::chunk) one at a time: take tokens from the
// server's bucket (waiting in a FIFO on the server's timer when it is
// empty), read the step with uv_fs_read at ref.offset + sent, write it with
// uv_write. Only one read or write is in flight per connection, so memory
// per connection is one step's buffer however large the piece.
//
// With TLS (Options::tls) the connection handshakes first (within the
// request-head timeout) and nothing is parsed before it completes; then
// each read is decrypted into inbuf, and each response write (a reply, the
// head with the first step, a step) is sealed into `sealed` first, so it is
// still one write in flight. Handshake flights and alerts go out as small
// writes of their own, in the order the session produced them; libuv keeps
// writes in order.
//
// Requests that arrive while a response is being sent (pipelining) are kept
// unparsed, up to kMaxPipelined bytes; reading stops beyond that. A client
// that closes (EOF or an error on read or write) frees everything at once,
// mid-piece or not: an upload has nobody left to serve.
#include "shoal/p2p/upload_server.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "shoal/http/http.h"
#include "shoal/obs/log.h"
#include "shoal/obs/metrics.h"
#include "shoal/p2p/protocol.h"
#include "shoal/task/store.h"
#include "shoal/tls/session.h"
#include "shoal/util/sockaddr.h"

namespace shoal::p2p {
namespace {

constexpr uint32_t kChunk = 1024 * 1024;  // one thread-pool read per MiB sent
constexpr uint32_t kMinChunk = 64 * 1024;
constexpr size_t kReadBufferSize = 64 * 1024;
constexpr size_t kMaxPipelined = 64 * 1024;
constexpr size_t kMaxHeaderBytes = 16 * 1024;
constexpr uint64_t kForbiddenLogIntervalMs = 1000;

uint64_t g_header_timeout_ms = 30 * 1000;
uint64_t g_idle_timeout_ms = 60 * 1000;

struct Metrics {
  obs::Counter& bytes = obs::metrics().counter("shoal_upload_bytes_total", "Piece bytes sent to other peers");
  obs::Counter& pieces =
      obs::metrics().counter("shoal_upload_pieces_total", "Pieces sent whole to other peers");
  obs::Counter& from_memory = obs::metrics().counter(
      "shoal_upload_started_total", "Piece uploads started, by where the bytes came from", "from=\"memory\"");
  obs::Counter& from_disk = obs::metrics().counter(
      "shoal_upload_started_total", "Piece uploads started, by where the bytes came from", "from=\"disk\"");
  obs::Counter& forbidden = obs::metrics().counter(
      "shoal_upload_rejected_total", "Piece requests refused, by reason", "reason=\"forbidden\"");
  obs::Counter& busy = obs::metrics().counter("shoal_upload_rejected_total",
                                              "Piece requests refused, by reason", "reason=\"busy\"");
  obs::Gauge& active = obs::metrics().gauge("shoal_upload_active", "Pieces being sent to other peers");
};

Metrics& m() {
  static Metrics mm;
  return mm;
}

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// "/v1/tasks/<64 lower-case hex>/pieces/<decimal index>": true with the
// parts filled. Refuses upper-case hex, leading zeros, signs, a query and an
// index of kMaxPieces or more.
bool parse_piece_path(const std::string& target, std::string* task, uint32_t* index) {
  static const std::string kPrefix = "/v1/tasks/";
  static const std::string kMiddle = "/pieces/";
  if (target.compare(0, kPrefix.size(), kPrefix) != 0) return false;
  size_t p = kPrefix.size();
  if (target.size() < p + 64 + kMiddle.size() + 1) return false;
  for (size_t i = 0; i < 64; ++i)
    if (!is_lower_hex(target[p + i])) return false;
  if (target.compare(p + 64, kMiddle.size(), kMiddle) != 0) return false;
  size_t d = p + 64 + kMiddle.size();
  size_t digits = target.size() - d;
  if (digits == 0 || digits > 7 || (digits > 1 && target[d] == '0')) return false;
  uint64_t v = 0;
  for (size_t i = d; i < target.size(); ++i) {
    char c = target[i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v >= kMaxPieces) return false;
  *task = target.substr(p, 64);
  *index = static_cast<uint32_t>(v);
  return true;
}

struct Conn;

// The server's state; UploadServer::Impl is this.
struct Server {
  Server(uv_loop_t* l, PieceSource* s, Verifier* v, UploadServer::Options o)
      : loop(l), source(s), verifier(v), opts(o) {
    // Under a rate limit a step is at most 1/16 s of it: a connection
    // waiting for a whole MiB's tokens would get nothing for a second at
    // 1 MiB/s, and its peer would take the parent for a stalled one.
    if (opts.rate > 0)
      chunk =
          static_cast<uint32_t>(std::clamp<uint64_t>(opts.rate / 16, kMinChunk, kChunk)) & ~(kMinChunk - 1);
    burst = std::max<double>(chunk, static_cast<double>(opts.rate) / 10.0);
    tokens = burst;
    last_refill_ns = uv_hrtime();
    uv_timer_init(loop, &rate_timer);
    rate_timer.data = this;
    open_handles = 1;
  }

  // Token bucket. True when n bytes may go now; otherwise c is queued and
  // resumed (Conn::tokens_granted) once they have accrued.
  bool take_tokens(Conn* c, uint32_t n);
  void refill();
  void arm_rate_timer();
  static void on_rate_timer(uv_timer_t* t);
  void forget_waiter(Conn* c);

  static void on_connection(uv_stream_t* s, int status);
  void conn_freed(Conn* c);
  void handle_closed();
  void maybe_done();
  void log_forbidden(const std::string& peer, const char* why);

  uv_loop_t* loop;
  PieceSource* source;
  Verifier* verifier;
  UploadServer::Options opts;

  uv_tcp_t* listener = nullptr;
  Conn* conns = nullptr;  // intrusive list
  uint32_t busy = 0;

  uint32_t chunk = kChunk;  // bytes per step
  double burst = 0, tokens = 0;
  uint64_t last_refill_ns = 0;
  uv_timer_t rate_timer{};
  struct Waiter {
    Conn* conn;
    uint32_t need;
  };
  std::deque<Waiter> waiters;

  uint64_t last_forbidden_log_ms = 0;
  bool logged_forbidden = false;
  uint64_t forbidden_suppressed = 0;

  char read_buffer[kReadBufferSize];

  int open_handles = 0;  // the rate timer and the listener
  bool closing = false;
  bool closed = false;
  std::function<void()> done;
};

struct Conn : http::Handler {
  enum class State { Idle, Reply, Send, Closing };

  explicit Conn(Server* s) : srv(s), parser(http::Parser::Kind::Request, this, kMaxHeaderBytes) {
    tcp.data = this;
    timer.data = this;
  }

  // http::Handler: the parser pauses after each request so one is answered
  // at a time; later bytes wait in inbuf.
  int on_head(http::MessageHead& h) override {
    head = h;
    return 0;
  }
  int on_body(const char*, size_t len) override {
    body_bytes += len;
    return 0;
  }
  int on_message_complete() override {
    request_ready = true;
    parser.pause();
    return 0;
  }

  uint64_t now_ms() const { return uv_now(srv->loop); }
  void start();
  void process();
  void handle_request();
  void reply(const std::string& bytes);
  void forbidden(const char* why);
  void start_piece();
  void pump();
  void tokens_granted();
  void read_done(ssize_t got);
  void send_step(const char* bytes);
  void write_done(int status);
  void piece_done();
  void after_response();
  void update_reads();
  void restart_timer();
  void close_conn(bool reset);
  void release_piece();
  void maybe_free();
  int send(const uv_buf_t* bufs, unsigned nbufs);
  bool read_tls(const char* data, size_t len);
  int flush_tls();

  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_write(uv_write_t* req, int status);
  static void on_fs_read(uv_fs_t* req);
  static void on_timer(uv_timer_t* t);
  static void on_closed(uv_handle_t* h);

  Server* srv;
  Conn* prev = nullptr;
  Conn* next = nullptr;
  uv_tcp_t tcp{};
  uv_timer_t timer{};
  uv_write_t write_req{};
  uv_fs_t fs_req{};
  int open_handles = 0;
  State state = State::Idle;
  std::string peer;

  http::Parser parser;
  http::MessageHead head;
  size_t body_bytes = 0;
  bool request_ready = false;
  bool keep_alive = true;
  std::string inbuf;  // received, not yet parsed
  bool reading = false;
  uint64_t last_activity_ms = 0;
  uint64_t head_deadline_ms = 0;  // 0: no request head in progress

  // The response being written (Reply) or the 200 head (Send, written
  // together with the first step).
  std::string out;
  bool writing = false;

  // Send.
  PieceRef ref;
  bool holding = false;  // ref must still be released
  bool slot = false;     // counted in srv->busy
  uint64_t sent = 0;
  uint32_t step = 0;  // bytes of the step in buf
  // Reads are whole aligned blocks into an aligned buffer: a piece of a
  // task still downloading is read through an O_DIRECT fd
  // (task::kDirectAlign). The step's bytes start skip into buf.
  struct FreeDeleter {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, FreeDeleter> buf;
  uint32_t skip = 0;
  bool fs_pending = false;
  bool waiting_tokens = false;  // queued in srv->waiters
  bool has_tokens = false;      // the next step's tokens are taken

  // TLS (srv->opts.tls).
  std::unique_ptr<tls::Session> tls;
  std::vector<uint8_t> sealed;  // the response write in flight, encrypted
};

// A handshake flight or an alert on its way out. libuv runs write
// callbacks (cancelled ones too) before the TCP handle's close callback, so
// conn is alive in the callback.
struct TlsWrite {
  uv_write_t req{};
  std::vector<uint8_t> bytes;
  Conn* conn = nullptr;
};

// ---------------------------------------------------------------------------
// Connections.

void Conn::start() {
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getpeername(&tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) peer = util::sockaddr_str(ss);
  uv_tcp_nodelay(&tcp, 1);
  last_activity_ms = now_ms();
  if (srv->opts.tls != nullptr) {
    tls = tls::Session::server(srv->opts.tls);
    if (tls == nullptr) return close_conn(true);
    tls->set_log_label("peer " + peer);
    head_deadline_ms = last_activity_ms + g_header_timeout_ms;  // for the handshake
  }
  restart_timer();
  update_reads();
}

// Ciphertext from the peer: advances the handshake, then decrypts into
// inbuf. False when the connection is closing.
bool Conn::read_tls(const char* data, size_t len) {
  tls->feed(reinterpret_cast<const uint8_t*>(data), len);
  if (!tls->handshake_done()) {
    tls::Status st = tls->handshake();
    if (flush_tls() != 0) {
      close_conn(true);
      return false;
    }
    if (st == tls::Status::Error) {
      // Plain HTTP, another secret, or not TLS 1.2 with the PSK suite.
      srv->log_forbidden(peer, ("TLS " + tls->error_string()).c_str());
      close_conn(true);
      return false;
    }
    if (st != tls::Status::Ok) return true;
    head_deadline_ms = 0;  // process() arms it again for a request head
  }
  // data has been copied into the session: the read buffer takes plaintext.
  auto* plain = reinterpret_cast<uint8_t*>(srv->read_buffer);
  for (;;) {
    size_t n = 0;
    tls::Status st = tls->read(plain, kReadBufferSize, &n);
    if (flush_tls() != 0) {
      close_conn(true);
      return false;
    }
    switch (st) {
      case tls::Status::Ok:
        inbuf.append(srv->read_buffer, n);
        continue;
      case tls::Status::WantRead:
        return true;
      case tls::Status::Closed:  // close_notify: as EOF
        close_conn(state != State::Idle || !inbuf.empty());
        return false;
      case tls::Status::Error:
        obs::log_debug("upload TLS read failed").str("peer", peer).str("error", tls->error_string());
        close_conn(true);
        return false;
    }
  }
}

// Writes what the session produced outside a response (handshake flights,
// alerts). 0 or a libuv error.
int Conn::flush_tls() {
  std::vector<uint8_t>& o = tls->output();
  if (o.empty()) return 0;
  auto* w = new TlsWrite;
  w->bytes = std::move(o);
  o.clear();
  w->conn = this;
  w->req.data = w;
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(w->bytes.data()), static_cast<unsigned>(w->bytes.size()));
  int r = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&tcp), &b, 1, [](uv_write_t* req, int status) {
    auto* tw = static_cast<TlsWrite*>(req->data);
    Conn* c = tw->conn;
    delete tw;
    if (status < 0 && c->state != State::Closing) c->close_conn(true);
  });
  if (r != 0) delete w;
  return r;
}

// Starts the response write (write_req; on_write follows): the buffers as
// they are, or sealed into one run of records with TLS.
int Conn::send(const uv_buf_t* bufs, unsigned nbufs) {
  write_req.data = this;
  auto* st = reinterpret_cast<uv_stream_t*>(&tcp);
  if (!tls) return uv_write(&write_req, st, bufs, nbufs, on_write);
  // Records sealed earlier go first (none: every session call is flushed).
  if (int r = flush_tls(); r != 0) return r;
  // Ping-pong between two buffers: the session seals into the one the last
  // write used, so a piece's steps allocate nothing.
  sealed.clear();
  std::swap(sealed, tls->output());
  for (unsigned i = 0; i < nbufs; i++) {
    if (tls->write(reinterpret_cast<const uint8_t*>(bufs[i].base), bufs[i].len) != tls::Status::Ok) {
      obs::log_debug("upload TLS write failed").str("peer", peer).str("error", tls->error_string());
      return UV_EPROTO;
    }
  }
  std::swap(sealed, tls->output());
  uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(sealed.data()), static_cast<unsigned>(sealed.size()));
  return uv_write(&write_req, st, &b, 1, on_write);
}

void Conn::on_alloc(uv_handle_t* h, size_t, uv_buf_t* b) {
  auto* c = static_cast<Conn*>(h->data);
  *b = uv_buf_init(c->srv->read_buffer, static_cast<unsigned>(kReadBufferSize));
}

void Conn::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* b) {
  auto* c = static_cast<Conn*>(s->data);
  if (c->state == State::Closing || nread == 0) return;
  if (nread < 0) {
    // EOF or an error: whatever is being sent has nobody left to go to.
    c->close_conn(nread != UV_EOF || c->state != State::Idle || !c->inbuf.empty());
    return;
  }
  if (c->tls) {
    if (!c->read_tls(b->base, static_cast<size_t>(nread))) return;
  } else {
    c->inbuf.append(b->base, static_cast<size_t>(nread));
  }
  if (c->state == State::Idle) {
    c->last_activity_ms = c->now_ms();
    c->process();
  }
  if (c->state != State::Closing) c->update_reads();
}

// Reads while the buffered next requests stay under kMaxPipelined.
void Conn::update_reads() {
  bool want = state != State::Closing && inbuf.size() < kMaxPipelined;
  if (want == reading) return;
  reading = want;
  auto* st = reinterpret_cast<uv_stream_t*>(&tcp);
  if (want) {
    if (uv_read_start(st, on_alloc, on_read) != 0) {
      reading = false;
      close_conn(true);
    }
  } else {
    uv_read_stop(st);
  }
}

// Parses buffered bytes until a request is complete (then answers it) or
// the bytes run out. Idle state only.
void Conn::process() {
  while (state == State::Idle && !inbuf.empty()) {
    size_t n = parser.feed(inbuf.data(), inbuf.size());
    inbuf.erase(0, n);
    if (parser.error() != http::Error::None) {
      int status = http::status_for(parser.error());
      if (status == 500) status = 400;
      keep_alive = false;
      reply(http::simple_response(status, http::reason_phrase(status), false));
      return;
    }
    if (request_ready) {
      request_ready = false;
      head_deadline_ms = 0;
      handle_request();
      return;
    }
    if (n == 0) break;
  }
  if (state == State::Idle && head_deadline_ms == 0 && (parser.in_message() || !inbuf.empty())) {
    head_deadline_ms = now_ms() + g_header_timeout_ms;
    restart_timer();
  }
}

void Conn::handle_request() {
  // After a CONNECT the parser reads nothing more: answer, then close.
  keep_alive = head.keep_alive && !parser.upgraded();
  bool had_body = body_bytes > 0;
  body_bytes = 0;
  Verifier::Verdict v =
      srv->verifier->verify(head.method, head.target, head.headers, std::string_view(), time(nullptr));
  if (v != Verifier::Verdict::Ok) return forbidden(to_string(v));
  std::string task;
  uint32_t index = 0;
  if (head.method != "GET" || had_body || !parse_piece_path(head.target, &task, &index))
    return forbidden("not a piece request");
  if (srv->busy >= srv->opts.slots || srv->source->piece_busy(task, index)) {
    m().busy.inc();
    return reply(http::simple_response(503, "busy", keep_alive, {{"Retry-After", "1"}}));
  }
  PieceRef r;
  if (!srv->source->open_piece(task, index, &r)) return forbidden("piece not held");
  ref = r;
  holding = true;
  slot = true;
  srv->busy++;
  m().active.add(1);
  start_piece();
}

// One answer for every refusal, so the asker cannot tell a bad signature
// from a piece this host does not hold; the reason goes to the log only.
void Conn::forbidden(const char* why) {
  m().forbidden.inc();
  srv->log_forbidden(peer, why);
  reply(http::simple_response(403, "forbidden", keep_alive));
}

void Conn::reply(const std::string& bytes) {
  state = State::Reply;
  out = bytes;
  uv_buf_t b = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
  if (send(&b, 1) != 0) return close_conn(true);
  writing = true;
}

void Conn::start_piece() {
  state = State::Send;
  sent = 0;
  std::vector<http::Header> hs{{"Content-Type", "application/octet-stream"},
                               {"Content-Length", std::to_string(ref.length)}};
  if (!keep_alive) hs.push_back({"Connection", "close"});
  out = http::serialize_response_head(200, "OK", hs);
  last_activity_ms = now_ms();
  if (ref.length == 0) {
    uv_buf_t b = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
    step = 0;
    if (send(&b, 1) != 0) return close_conn(true);
    writing = true;
    return;
  }
  (ref.data ? m().from_memory : m().from_disk).inc();
  if (!buf && !ref.data) {
    buf.reset(static_cast<char*>(std::aligned_alloc(task::kDirectAlign, kChunk + 2 * task::kDirectAlign)));
    if (!buf) {
      obs::log_error("upload: no memory for a read buffer").str("peer", peer);
      return close_conn(true);
    }
  }
  pump();
}

// Starts the next step of the piece unless one is in flight.
void Conn::pump() {
  if (state != State::Send || fs_pending || writing || waiting_tokens) return;
  if (sent >= ref.length) return piece_done();
  uint64_t left = ref.length - sent;
  uint32_t n = left < srv->chunk ? static_cast<uint32_t>(left) : srv->chunk;
  if (has_tokens) {
    has_tokens = false;  // granted by the server's timer for this very step
  } else if (!srv->take_tokens(this, n)) {
    waiting_tokens = true;
    return;
  }
  step = n;
  if (ref.data) {
    // In memory (hot_pieces.h): straight to the socket; ref keeps the
    // bytes alive until the piece is released, after its last write.
    last_activity_ms = now_ms();
    return send_step(ref.data->data() + sent);
  }
  constexpr uint64_t kAlign = task::kDirectAlign;
  uint64_t at = ref.offset + sent;
  uint64_t first = at & ~(kAlign - 1);
  uint64_t last = (at + n + kAlign - 1) & ~(kAlign - 1);
  skip = static_cast<uint32_t>(at - first);
  uv_buf_t b = uv_buf_init(buf.get(), static_cast<unsigned>(last - first));
  fs_req.data = this;
  int r = uv_fs_read(srv->loop, &fs_req, ref.fd, &b, 1, static_cast<int64_t>(first), on_fs_read);
  if (r != 0) {
    obs::log_error("upload read failed").str("peer", peer).str("error", uv_strerror(r));
    return close_conn(true);
  }
  fs_pending = true;
}

void Conn::tokens_granted() {
  waiting_tokens = false;
  has_tokens = true;
  last_activity_ms = now_ms();
  pump();
}

void Conn::on_fs_read(uv_fs_t* req) {
  auto* c = static_cast<Conn*>(req->data);
  ssize_t got = req->result;
  uv_fs_req_cleanup(req);
  c->fs_pending = false;
  c->read_done(got);
}

void Conn::read_done(ssize_t got) {
  if (state == State::Closing) {
    // close_conn() left the piece to us: the source's fd had to stay
    // readable until this read returned.
    release_piece();
    maybe_free();
    return;
  }
  if (got <= static_cast<ssize_t>(skip)) {
    // The peer gets a short body, which it must treat as a failed piece.
    obs::log_error("upload read failed")
        .str("peer", peer)
        .str("error", got < 0 ? uv_strerror(static_cast<int>(got)) : "short file");
    return close_conn(true);
  }
  last_activity_ms = now_ms();
  // Whole blocks may reach past the step (into the next piece): only the
  // step's own bytes go out.
  if (static_cast<uint64_t>(got) - skip < step) step = static_cast<uint32_t>(got - skip);
  send_step(buf.get() + skip);
}

// The step's bytes, behind the 200 head when this is the first step.
void Conn::send_step(const char* bytes) {
  uv_buf_t bufs[2];
  unsigned nbufs = 0;
  if (!out.empty()) bufs[nbufs++] = uv_buf_init(out.data(), static_cast<unsigned>(out.size()));
  bufs[nbufs++] = uv_buf_init(const_cast<char*>(bytes), step);  // libuv's type; only read
  if (send(bufs, nbufs) != 0) return close_conn(true);
  writing = true;
}

void Conn::on_write(uv_write_t* req, int status) { static_cast<Conn*>(req->data)->write_done(status); }

void Conn::write_done(int status) {
  writing = false;
  if (state == State::Closing) return;  // on_closed follows
  if (status < 0) return close_conn(true);
  last_activity_ms = now_ms();
  out.clear();
  if (state == State::Reply) return after_response();
  sent += step;
  m().bytes.inc(step);
  step = 0;
  pump();
}

void Conn::piece_done() {
  m().pieces.inc();
  release_piece();
  after_response();
}

// The piece's pin and slot go back exactly once, whichever way the piece
// ends.
void Conn::release_piece() {
  if (slot) {
    slot = false;
    srv->busy--;
    m().active.add(-1);
  }
  if (holding) {
    holding = false;
    srv->source->release_piece(ref);
    ref = PieceRef{};  // a piece in memory is not kept alive by an idle connection
  }
}

// A response is out: serve the next request, or close when either side
// asked for it.
void Conn::after_response() {
  if (!keep_alive) return close_conn(false);
  state = State::Idle;
  buf.reset();
  if (tls) {
    std::vector<uint8_t>().swap(sealed);
    tls->trim();
  }
  last_activity_ms = now_ms();
  parser.resume();
  process();
  if (state != State::Closing) update_reads();
}

void Conn::restart_timer() {
  if (state == State::Closing) return;
  uint64_t now = now_ms();
  uint64_t due = last_activity_ms + g_idle_timeout_ms;
  if (head_deadline_ms != 0 && head_deadline_ms < due) due = head_deadline_ms;
  uv_timer_start(&timer, on_timer, due > now ? due - now : 1, 0);
}

// Fires at the earliest due time armed; activity since then only moved
// last_activity_ms, so the due time is worked out again here.
void Conn::on_timer(uv_timer_t* t) {
  auto* c = static_cast<Conn*>(t->data);
  if (c->state == State::Closing) return;
  uint64_t now = c->now_ms();
  uint64_t due = c->last_activity_ms + g_idle_timeout_ms;
  if (c->head_deadline_ms != 0 && c->head_deadline_ms < due) due = c->head_deadline_ms;
  // Waiting for tokens or the disk is this host's doing, not the peer's.
  if (now < due || c->waiting_tokens || c->fs_pending) {
    if (now >= due) c->last_activity_ms = now;
    c->restart_timer();
    return;
  }
  obs::log_debug("upload connection timed out")
      .str("peer", c->peer)
      .str("in", c->head_deadline_ms != 0  ? "request head"
                 : c->state == State::Idle ? "idle"
                                           : "send");
  c->close_conn(c->state != State::Idle || c->head_deadline_ms != 0);
}

void Conn::close_conn(bool reset) {
  if (state == State::Closing) return;
  state = State::Closing;
  if (waiting_tokens) {
    srv->forget_waiter(this);
    waiting_tokens = false;
  }
  if (fs_pending) {
    // The read finishes into buf: the slot goes now, the piece when it
    // returns (read_done).
    if (slot) {
      slot = false;
      srv->busy--;
      m().active.add(-1);
    }
  } else {
    release_piece();
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_closed);
  auto* h = reinterpret_cast<uv_handle_t*>(&tcp);
  if (!reset || uv_tcp_close_reset(&tcp, on_closed) != 0) uv_close(h, on_closed);
}

void Conn::on_closed(uv_handle_t* h) {
  auto* c = static_cast<Conn*>(h->data);
  c->open_handles--;
  c->maybe_free();
}

void Conn::maybe_free() {
  if (state != State::Closing || open_handles > 0 || fs_pending) return;
  Server* s = srv;
  s->conn_freed(this);
  delete this;
  s->maybe_done();
}

// ---------------------------------------------------------------------------
// The server.

void Server::on_connection(uv_stream_t* l, int status) {
  auto* s = static_cast<Server*>(l->data);
  if (status < 0) {
    obs::log_warn("upload accept failed").str("error", uv_strerror(status));
    return;
  }
  if (s->closing) return;
  auto* c = new Conn(s);
  uv_tcp_init(s->loop, &c->tcp);
  uv_timer_init(s->loop, &c->timer);
  c->open_handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  if (uv_accept(l, reinterpret_cast<uv_stream_t*>(&c->tcp)) != 0) {
    c->close_conn(false);
    return;
  }
  c->start();
}

void Server::conn_freed(Conn* c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (conns == c) conns = c->next;
  // The last connection gone: the replay cache gets to remove what it has
  // forgotten (requests remove only a few each), so an upload server left
  // idle after a burst gives that memory back.
  if (!conns) verifier->tidy(static_cast<int64_t>(time(nullptr)));
}

void Server::handle_closed() {
  open_handles--;
  maybe_done();
}

void Server::maybe_done() {
  if (!closing || closed || conns != nullptr || open_handles > 0) return;
  closed = true;
  // done may destroy the server: nothing of this runs after it.
  std::function<void()> d = std::move(done);
  if (d) d();
}

void Server::log_forbidden(const std::string& peer_addr, const char* why) {
  uint64_t now = uv_now(loop);
  if (logged_forbidden && now - last_forbidden_log_ms < kForbiddenLogIntervalMs) {
    forbidden_suppressed++;
    return;
  }
  logged_forbidden = true;
  last_forbidden_log_ms = now;
  obs::log_warn("upload request forbidden")
      .str("peer", peer_addr)
      .str("reason", why)
      .num("suppressed", static_cast<int64_t>(forbidden_suppressed));
  forbidden_suppressed = 0;
}

void Server::refill() {
  uint64_t now = uv_hrtime();
  double add = static_cast<double>(now - last_refill_ns) * static_cast<double>(opts.rate) / 1e9;
  last_refill_ns = now;
  tokens = std::min(burst, tokens + add);
}

bool Server::take_tokens(Conn* c, uint32_t n) {
  if (opts.rate == 0) return true;
  refill();
  if (waiters.empty() && tokens >= n) {
    tokens -= n;
    return true;
  }
  waiters.push_back({c, n});
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&rate_timer))) arm_rate_timer();
  return false;
}

void Server::arm_rate_timer() {
  if (waiters.empty() || closing) return;
  double missing = waiters.front().need - tokens;
  uint64_t ms = 1;
  if (missing > 0) ms = static_cast<uint64_t>(std::ceil(missing * 1000.0 / static_cast<double>(opts.rate)));
  uv_timer_start(&rate_timer, on_rate_timer, ms > 0 ? ms : 1, 0);
}

// Hands tokens out in arrival order, so one connection cannot starve the
// others by asking first every time.
void Server::on_rate_timer(uv_timer_t* t) {
  auto* s = static_cast<Server*>(t->data);
  s->refill();
  while (!s->waiters.empty() && s->tokens >= s->waiters.front().need) {
    Waiter w = s->waiters.front();
    s->waiters.pop_front();
    s->tokens -= w.need;
    w.conn->tokens_granted();  // may close the conn; it is off the queue already
  }
  s->arm_rate_timer();
}

void Server::forget_waiter(Conn* c) {
  for (auto it = waiters.begin(); it != waiters.end(); ++it) {
    if (it->conn == c) {
      waiters.erase(it);
      break;
    }
  }
  if (waiters.empty()) uv_timer_stop(&rate_timer);
}

}  // namespace

void set_upload_timeouts_for_test(uint64_t header_ms, uint64_t idle_ms) {
  g_header_timeout_ms = header_ms;
  g_idle_timeout_ms = idle_ms;
}

// ---------------------------------------------------------------------------
// The public face.

struct UploadServer::Impl : Server {
  using Server::Server;
};

UploadServer::UploadServer(uv_loop_t* loop, PieceSource* source, Verifier* verifier, Options opts)
    : impl_(new Impl(loop, source, verifier, opts)) {}

UploadServer::~UploadServer() = default;

int UploadServer::listen(const std::string& addr, uint16_t port, std::string* err) {
  Server* s = impl_.get();
  if (s->listener || s->closing) {
    *err = "upload server already listening or closed";
    return UV_EALREADY;
  }
  sockaddr_storage ss{};
  int family = AF_INET;
  if (uv_ip4_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in*>(&ss)) != 0) {
    if (uv_ip6_addr(addr.c_str(), port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) {
      *err = "not an IP address: " + addr;
      return UV_EINVAL;
    }
    family = AF_INET6;
  }
  auto* t = new uv_tcp_t;
  int r = uv_tcp_init_ex(s->loop, t, static_cast<unsigned>(family));
  if (r != 0) {
    delete t;
    *err = std::string("socket: ") + uv_strerror(r);
    return r;
  }
  t->data = s;
  s->open_handles++;
  r = uv_tcp_bind(t, reinterpret_cast<sockaddr*>(&ss), 0);
  if (r == 0) r = uv_listen(reinterpret_cast<uv_stream_t*>(t), 511, Server::on_connection);
  if (r != 0) {
    *err = "cannot listen on " + addr + ":" + std::to_string(port) + ": " + uv_strerror(r);
    uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) {
      auto* impl = static_cast<Server*>(h->data);
      delete reinterpret_cast<uv_tcp_t*>(h);
      impl->handle_closed();
    });
    return r;
  }
  s->listener = t;
  return 0;
}

uint16_t UploadServer::port() const {
  if (!impl_->listener) return 0;
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getsockname(impl_->listener, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  return util::sockaddr_port(ss);
}

void UploadServer::close(std::function<void()> done) {
  Server* s = impl_.get();
  if (s->closing) return;
  s->closing = true;
  s->done = std::move(done);
  if (s->listener) {
    uv_close(reinterpret_cast<uv_handle_t*>(s->listener), [](uv_handle_t* h) {
      auto* impl = static_cast<Server*>(h->data);
      delete reinterpret_cast<uv_tcp_t*>(h);
      impl->handle_closed();
    });
    s->listener = nullptr;
  }
  s->waiters.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(&s->rate_timer),
           [](uv_handle_t* h) { static_cast<Server*>(h->data)->handle_closed(); });
  // close_conn() never frees synchronously (the frees come from close
  // callbacks), so walking the list is safe.
  for (Conn* c = s->conns; c; c = c->next) {
    c->waiting_tokens = false;
    c->close_conn(true);
  }
}

uint32_t UploadServer::busy_slots() const { return impl_->busy; }

uint32_t UploadServer::free_slots() const {
  return impl_->busy >= impl_->opts.slots ? 0 : impl_->opts.slots - impl_->busy;
}

}  // namespace shoal::p2p
