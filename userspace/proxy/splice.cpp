// Splice: a plain tunnel's bytes moved inside the kernel. See splice.h.
#include "splice.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace shoal::proxy {

namespace {

// A pipe's default capacity. Larger pipes (F_SETPIPE_SZ, 1 MiB) moved the
// bench's tunnel no faster and count against the user's pipe limits.
constexpr size_t kPipeBytes = 64 * 1024;
// A read this large says the source has a stream going (a pipe's worth, or
// half of one when the pipe's slots filled with partial pages).
constexpr size_t kBulkBytes = kPipeBytes / 2;
// Rounds of read-then-write per direction and readiness event, so one busy
// tunnel cannot hold the loop from the other connections.
constexpr int kRoundsPerEvent = 8;

void close_fd(int* fd) {
  if (*fd >= 0) ::close(*fd);
  *fd = -1;
}

std::string errno_text(const char* what, int e) { return std::string(what) + ": " + std::strerror(e); }

}  // namespace

Splice* Splice::start(uv_loop_t* loop, int a_fd, int b_fd, Events ev, std::string* err) {
  auto* s = new Splice();
  s->ev_ = std::move(ev);
  auto give_up = [&](std::string why) -> Splice* {
    *err = std::move(why);
    s->ev_ = Events{};  // nothing is reported for a start that failed
    if (s->polls_open_ > 0) {
      s->close();  // frees itself in the close callback
    } else {
      delete s;
    }
    return nullptr;
  };
  const int in[2] = {a_fd, b_fd};
  for (int i = 0; i < 2; ++i) {
    s->fds_[i] = ::fcntl(in[i], F_DUPFD_CLOEXEC, 0);
    if (s->fds_[i] < 0) return give_up(errno_text("dup", errno));
  }
  for (int d = 0; d < 2; ++d) {
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return give_up(errno_text("pipe", errno));
    s->dirs_[d].pipe_r = p[0];
    s->dirs_[d].pipe_w = p[1];
    s->dirs_[d].from = s->fds_[d];
    s->dirs_[d].to = s->fds_[1 - d];
  }
  for (int i = 0; i < 2; ++i) {
    int r = uv_poll_init_socket(loop, &s->poll_[i], s->fds_[i]);
    if (r != 0) return give_up(std::string("uv_poll_init: ") + uv_strerror(r));
    s->poll_[i].data = s;
    s->polls_open_++;
  }
  // Bytes may be waiting in the kernel already: they raise no new event for
  // a level-triggered poll that is only now armed, but the first poll
  // reports them.
  s->rearm();
  return s;
}

Splice::~Splice() {
  for (int& fd : fds_) close_fd(&fd);
  for (Dir& d : dirs_) {
    close_fd(&d.pipe_r);
    close_fd(&d.pipe_w);
  }
}

void Splice::close() {
  if (closing_) return;
  closing_ = true;
  for (uv_poll_t& p : poll_)
    if (p.data == this) uv_close(reinterpret_cast<uv_handle_t*>(&p), on_close);
}

void Splice::on_close(uv_handle_t* h) {
  auto* s = static_cast<Splice*>(h->data);
  if (--s->polls_open_ > 0) return;
  std::function<void()> closed = std::move(s->ev_.closed);
  delete s;
  if (closed) closed();
}

void Splice::on_poll(uv_poll_t* p, int status, int) {
  auto* s = static_cast<Splice*>(p->data);
  if (s->closing_ || s->finished_) return;
  if (status < 0) {
    s->fail(std::string("poll: ") + uv_strerror(status));
    return;
  }
  // Either socket's readiness can serve both directions (readable a feeds
  // a→b, writable a drains b→a): pump both.
  if (!s->pump(0) || !s->pump(1)) return;
  bool ended = true;
  for (const Dir& d : s->dirs_) ended = ended && d.eof && d.in_pipe == 0 && d.shut;
  if (ended) {
    s->finished_ = true;
    for (uv_poll_t& h : s->poll_) uv_poll_stop(&h);
    s->ev_.done(true, "");
    return;
  }
  s->rearm();
}

bool Splice::pump(int di) {
  Dir& d = dirs_[di];
  for (int round = 0; round < kRoundsPerEvent; ++round) {
    bool progress = false;
    if (!d.eof && d.in_pipe == 0) {
      ssize_t n = ::splice(d.from, nullptr, d.pipe_w, nullptr, kPipeBytes, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d.in_pipe = static_cast<size_t>(n);
        set_nagle(d, d.in_pipe >= kBulkBytes);
        progress = true;
      } else if (n == 0) {
        d.eof = true;
        set_nagle(d, false);
        progress = true;
      } else if (errno == EAGAIN) {
        set_nagle(d, false);  // the source ran dry: what is held goes now
      } else if (errno != EINTR) {
        fail(errno_text(di == 0 ? "reading the client" : "reading the origin", errno));
        return false;
      }
    }
    if (d.in_pipe > 0) {
      ssize_t n = ::splice(d.pipe_r, nullptr, d.to, nullptr, d.in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d.in_pipe -= static_cast<size_t>(n);
        d.moved += static_cast<uint64_t>(n);
        if (ev_.moved) ev_.moved(di, static_cast<size_t>(n));
        progress = true;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        fail(errno_text(di == 0 ? "writing to the origin" : "writing to the client", errno));
        return false;
      }
    }
    if (d.eof && d.in_pipe == 0 && !d.shut) {
      d.shut = true;
      if (::shutdown(d.to, SHUT_WR) != 0 && errno != ENOTCONN) {
        fail(errno_text("shutdown", errno));
        return false;
      }
    }
    if (!progress) return true;
  }
  // Out of rounds with bytes perhaps still coming: nothing may stay held
  // until the next event, which may never come if the source just ran dry.
  set_nagle(d, false);
  return true;
}

// With TCP_NODELAY (Shoal's sockets have it) each 64 KiB moved leaves as a
// full loopback segment (MSS 65483) and a 53-byte one: twice the packets,
// and twice the receiver's wakeups. While the source keeps a full pipe
// coming, Nagle on the sink merges those tails into the next write; when
// the source runs dry, TCP_NODELAY again, which sends what is held at once,
// so the end of a burst never waits for an ACK.
void Splice::set_nagle(Dir& d, bool on) {
  if (d.nagle == on) return;
  int nodelay = on ? 0 : 1;
  // A failure leaves the socket as it was: correct either way, only slower.
  if (::setsockopt(d.to, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay) == 0) d.nagle = on;
}

void Splice::fail(const std::string& why) {
  finished_ = true;
  for (uv_poll_t& h : poll_) uv_poll_stop(&h);
  ev_.done(false, why);
}

// Socket i is the source of direction i and the sink of the other one.
void Splice::rearm() {
  for (int i = 0; i < 2; ++i) {
    int events = 0;
    if (!dirs_[i].eof && dirs_[i].in_pipe == 0) events |= UV_READABLE;
    if (dirs_[1 - i].in_pipe > 0) events |= UV_WRITABLE;
    if (events != 0)
      uv_poll_start(&poll_[i], events, on_poll);
    else
      uv_poll_stop(&poll_[i]);
  }
}

}  // namespace shoal::proxy
