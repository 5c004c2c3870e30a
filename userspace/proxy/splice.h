// Splice: moves a plain tunnel's bytes between two connected TCP sockets
// inside the kernel (splice(2) through one pipe per direction), so they are
// never copied into Shoal's memory and back. Internal to the proxy module.
//
// A Conn hands its two sockets over once the tunnel carries nothing but
// bytes (the CONNECT's answer and the bytes read before it are written, no
// FIN seen). Splice watches dups of both sockets with uv_poll (the libuv
// TCP handles stay the Conn's, reading stopped), so closing works as
// before: the sockets go when the Conn's handles and these dups are closed.
//
// Per direction: read from the source into the pipe while the pipe is
// empty, write the pipe to the sink until it is empty; the source is
// watched only while the pipe is empty and the sink only while bytes wait,
// so at most one pipe's worth (64 KiB) is in flight per direction. A source's EOF
// becomes a shutdown(SHUT_WR) of the sink once its pipe is empty; both
// directions so ended is a clean finish.
//
// Ownership: the Conn creates it with start() and ends it with close();
// after close() it reports nothing more and frees itself once its poll
// handles' close callbacks have run, then calls `closed`. Loop thread only.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>

namespace shoal::proxy {

class Splice {
 public:
  struct Events {
    // n bytes reached the sink; dir 0: a→b, 1: b→a.
    std::function<void(int dir, size_t n)> moved;
    // Both directions ended with EOF, or (ok false) an error, named in why.
    std::function<void(bool ok, const std::string& why)> done;
    // After close(): the dups and pipes are closed; the object is gone.
    std::function<void()> closed;
  };

  // Takes neither fd (it dups them). Returns nullptr with *err set (and
  // nothing left open) when a dup, a pipe or a poll handle cannot be had:
  // the caller keeps relaying the bytes itself.
  static Splice* start(uv_loop_t* loop, int a_fd, int b_fd, Events ev, std::string* err);
  void close();
  uint64_t moved(int dir) const { return dirs_[dir].moved; }

 private:
  struct Dir {
    int from = -1, to = -1;  // the dups, not owned here (fds_ owns them)
    int pipe_r = -1, pipe_w = -1;
    size_t in_pipe = 0;
    bool eof = false, shut = false;
    bool nagle = false;  // TCP_NODELAY cleared on `to` (see set_nagle)
    uint64_t moved = 0;
  };
  Splice() = default;
  ~Splice();
  static void on_poll(uv_poll_t* p, int status, int events);
  static void on_close(uv_handle_t* h);
  // Moves what it can in direction d without blocking. false: failed (done
  // was reported).
  bool pump(int d);
  void fail(const std::string& why);
  void set_nagle(Dir& d, bool on);
  void rearm();

  uv_poll_t poll_[2]{};  // on fds_[0] (a) and fds_[1] (b)
  int fds_[2] = {-1, -1};
  Dir dirs_[2];
  Events ev_;
  int polls_open_ = 0;
  bool closing_ = false, finished_ = false;
};

}  // namespace shoal::proxy
