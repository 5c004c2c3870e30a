// Shared driver of fuzz_http_request and fuzz_http_response: feeds one input
// to the strict HTTP/1.1 wrapper (shoal/http/http.h) twice, once whole and
// once split at points the input's first bytes choose, and checks that
// nothing crashes or leaks, that the handler events (heads, de-chunked
// bodies, completions) and the error class are the same either way (the
// parser is resumable across any split), and that every accepted head keeps
// the wrapper's promises: header names are tokens, values and the target
// carry no CR, LF or NUL, and a head written back by serialize_*_head parses
// to the same fields.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "shoal/http/http.h"

namespace fuzz_http {

using shoal::http::Error;
using shoal::http::Header;
using shoal::http::MessageHead;
using shoal::http::Parser;

inline void check(bool ok) {
  if (!ok) std::abort();
}

inline bool has_ctl_break(const std::string& s) {
  return s.find_first_of(std::string("\r\n\0", 3)) != std::string::npos;
}

inline bool is_tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != '\0' && std::string("!#$%&'*+-.^_`|~").find(c) != std::string::npos);
}

// Records a transcript; bodies are joined per message so that the record
// does not depend on how the input was split.
struct Recorder : shoal::http::Handler {
  Parser* parser = nullptr;
  std::string log, body;
  std::vector<MessageHead> heads;
  bool pause_on_complete = false;

  int on_head(MessageHead& h) override {
    check(h.version_major == 1);
    for (const Header& hd : h.headers) {
      check(!hd.name.empty());
      for (char c : hd.name) check(is_tchar(c));
      check(!has_ctl_break(hd.value));
      check(hd.value.empty() || (hd.value.front() != ' ' && hd.value.back() != ' '));
      (void)shoal::http::is_hop_by_hop(hd.name, h);
    }
    check(!has_ctl_break(h.target) && !has_ctl_break(h.reason));
    check(h.content_length >= -1);
    if (parser->error() == Error::None && h.method.empty()) check(h.status >= 100 && h.status <= 599);
    heads.push_back(h);
    log += "HEAD " + h.method + " " + h.target + " " + std::to_string(h.status) + " " + h.reason + " " +
           std::to_string(h.version_minor) + " cl=" + std::to_string(h.content_length) +
           " ch=" + std::to_string(h.chunked) + " ka=" + std::to_string(h.keep_alive) + "\n";
    for (const Header& hd : h.headers) log += hd.name + ":" + hd.value + "\n";
    return 0;
  }
  int on_body(const char* data, size_t len) override {
    check(len > 0);
    body.append(data, len);
    return 0;
  }
  int on_message_complete() override {
    log += "BODY " + std::to_string(body.size()) + " " + body + "\nEND\n";
    body.clear();
    if (pause_on_complete) parser->pause();
    return 0;
  }
};

struct Options {
  Parser::Kind kind = Parser::Kind::Request;
  size_t max_header_bytes = 64 * 1024;
  bool no_body = false;  // responses: expect_no_body() before the first
  bool connect = false;  // responses: expect_connect_response()
  bool pause = false;    // pause after every message, resume and go on
  bool eof = false;      // feed_eof() after the last byte
};

struct Outcome {
  std::string log;
  Error error = Error::None;
  bool upgraded = false;
  size_t consumed = 0;
};

// Feeds input in pieces whose lengths come from cuts (cycled; 0 means the
// rest); empty cuts means one piece.
inline Outcome run(const Options& o, const std::string& input, const std::vector<size_t>& cuts) {
  Recorder rec;
  Parser p(o.kind, &rec, o.max_header_bytes);
  rec.parser = &p;
  rec.pause_on_complete = o.pause;
  if (o.no_body) p.expect_no_body();
  if (o.connect) p.expect_connect_response();
  size_t pos = 0, k = 0;
  while (pos < input.size()) {
    size_t want = cuts.empty() ? 0 : cuts[k++ % cuts.size()];
    size_t len = want == 0 || want > input.size() - pos ? input.size() - pos : want;
    size_t n = p.feed(input.data() + pos, len);
    check(n <= len);
    pos += n;
    if (p.error() != Error::None || p.upgraded()) break;
    if (p.paused()) {
      p.resume();
      continue;
    }
    check(n == len);  // neither paused, upgraded nor failed: everything taken
  }
  if (o.eof && p.error() == Error::None && !p.upgraded() && pos == input.size()) p.feed_eof();
  Outcome out;
  out.log = rec.log;
  out.error = p.error();
  out.upgraded = p.upgraded();
  out.consumed = pos;
  if (out.error != Error::None) {
    check(!p.error_detail().empty());
    int st = shoal::http::status_for(out.error);
    check(st >= 400 && st <= 599);
    check(shoal::http::to_string(out.error) != nullptr);
  }
  // Whatever was accepted writes back to a head that parses to the same
  // fields (the parser is strict, so nothing it passes may be unwritable).
  for (const MessageHead& h : rec.heads) {
    std::string again =
        o.kind == Parser::Kind::Request
            ? shoal::http::serialize_request_head(h.method, h.target, h.headers)
            : shoal::http::serialize_response_head(h.status, h.reason.empty() ? "X" : h.reason, h.headers);
    Recorder r2;
    Parser p2(o.kind, &r2, 1 << 20);
    r2.parser = &p2;
    p2.pause();
    p2.resume();
    p2.feed(again.data(), again.size());
    // A response whose head was bodiless (1xx, 204, 304) completes at once.
    if (p2.error() == Error::None && !r2.heads.empty()) {
      const MessageHead& g = r2.heads[0];
      check(g.method == h.method && g.target == h.target && g.status == h.status);
      check(g.headers.size() == h.headers.size());
      for (size_t i = 0; i < g.headers.size(); ++i)
        check(g.headers[i].name == h.headers[i].name && g.headers[i].value == h.headers[i].value);
    } else {
      check(false);  // the parser passed a head it cannot read back
    }
  }
  return out;
}

// The whole check: options and cut points from the first bytes, then a
// whole-input run and a split run that must agree.
inline void one_input(Parser::Kind kind, const uint8_t* data, size_t size) {
  if (size < 2) return;
  Options o;
  o.kind = kind;
  const uint8_t mode = data[0], cut = data[1];
  o.max_header_bytes = (mode & 1) != 0 ? 64 + cut : 64 * 1024;
  o.no_body = (mode & 2) != 0;
  o.connect = (mode & 4) != 0;
  o.pause = (mode & 8) != 0;
  o.eof = (mode & 16) != 0;
  const std::string input(reinterpret_cast<const char*>(data + 2), size - 2);
  const Outcome whole = run(o, input, {});
  // Splits: byte at a time, or pieces of 1 + cut % 13 and 1 + cut / 13.
  std::vector<size_t> cuts;
  if (cut == 0) {
    cuts = {1};
  } else {
    cuts = {1u + cut % 13u, 1u + cut / 13u};
  }
  const Outcome split = run(o, input, cuts);
  check(whole.log == split.log);
  check(whole.error == split.error);
  check(whole.upgraded == split.upgraded);
  if (whole.error == Error::None) check(whole.consumed == split.consumed);
}

}  // namespace fuzz_http
