// shoalctl: the command table and what the commands share. Each command
// lives in its own file under userspace/ctl/ and is a function taking the
// global options and its own arguments (everything after the command name,
// global options removed) and returning the process exit code. Single
// threaded; output goes to stdout (results, tables, JSON) and stderr
// (errors, progress).
#pragma once

#include <cjson/cJSON.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "shoal/http/http.h"

namespace shoal::ctl {

// Exit codes, the same for every command (run: CMD's own status instead).
enum Exit : int {
  kExitOk = 0,
  kExitFailed = 1,    // the daemon answered with an error; a download or check failed
  kExitUsage = 2,     // bad command line
  kExitNoDaemon = 3,  // the admin socket cannot be reached
  kExitDigest = 4,    // downloaded bytes do not match their digest
  kExitLocalIo = 5,   // cannot write the output file
};

struct Global {
  std::string socket;  // admin socket
  bool json = false;   // machine-readable output on stdout
};

struct Command {
  const char* name;
  const char* summary;  // one line for the global usage
  const char* help;     // the text of `shoalctl NAME --help`
  int (*run)(const Global& g, std::vector<std::string>& args);
};

// Entry point of the shoalctl binary.
int main(int argc, char** argv);

// The command functions (one file each).
int cmd_status(const Global& g, std::vector<std::string>& args);
int cmd_reload(const Global& g, std::vector<std::string>& args);
int cmd_attach(const Global& g, std::vector<std::string>& args);
int cmd_detach(const Global& g, std::vector<std::string>& args);
int cmd_run(const Global& g, std::vector<std::string>& args);
int cmd_cleanup(const Global& g, std::vector<std::string>& args);
int cmd_tasks(const Global& g, std::vector<std::string>& args);
int cmd_gc(const Global& g, std::vector<std::string>& args);
int cmd_check_config(const Global& g, std::vector<std::string>& args);
int cmd_get(const Global& g, std::vector<std::string>& args);
int cmd_preheat(const Global& g, std::vector<std::string>& args);

// --- talking to shoald ---------------------------------------------------------

using Json = std::unique_ptr<cJSON, decltype(&cJSON_Delete)>;
Json json_null();

// Sends {"cmd": cmd, ...fields} and parses the answer into *out. Returns
// kExitOk when the daemon answered {"ok": true, ...}; kExitFailed when it
// answered an error (printed to stderr as "shoalctl: CMD: ERROR" unless
// quiet; *out still holds the answer); kExitNoDaemon when it cannot be
// reached (printed unless quiet). fields may be null; it is consumed.
int admin(const Global& g, const std::string& cmd, cJSON* fields, Json* out, int timeout_ms = 5000,
          bool quiet = false);

// The proxy and the CAs get and preheat use: --proxy (or $SHOAL_PROXY),
// else the running daemon's explicit listener and site CA (the "client-info"
// admin command, open to every local user), else the configuration file's
// (proxy.tcpListen, hijackHTTPS.cert).
struct Access {
  std::string proxy;    // "host:port"
  std::string site_ca;  // hijackHTTPS.cert, "" when interception is off
  std::string from;     // "shoald", "--proxy", "config FILE"
};
struct AccessOptions {
  std::string proxy;             // --proxy
  std::string config;            // --config
  bool admin_reachable = false;  // set by find_access: the daemon answered
};
// false with *err when no proxy can be found.
bool find_access(const Global& g, AccessOptions* o, Access* out, std::string* err);

// The options get and preheat share (-H/--header, --proxy, --config,
// --cacert, --timeout, -q), and the client they lead to.
struct ClientArgs {
  AccessOptions ao;
  std::vector<std::string> cacerts;
  std::vector<http::Header> headers;
  std::string timeout_s;
  bool quiet = false;
};
// Consumes args[*i] (and its value) when it is one of those options: 1 when
// consumed, 0 when it is not one of them, -1 after a usage error (printed).
int parse_client_option(const char* cmd, const std::vector<std::string>& args, size_t* i, ClientArgs* c);
// Finds the proxy and the site CA (find_access) and makes the client: the
// system store, the site CA when readable, --cacert files, --timeout
// (default 60 s). Returns kExitOk with *client set, else the exit code after
// printing why; *acc says where the proxy came from.
class HttpClient;
int make_client(const char* cmd, const Global& g, ClientArgs* c, const std::string& user_agent, Access* acc,
                std::unique_ptr<HttpClient>* client);

// --- command-line helpers -----------------------------------------------------

// Pulls the value of an option that takes one ("-O FILE", "-OFILE" is not
// accepted, "--output=FILE" and "--output FILE" are). Returns false and
// prints a usage error when the value is missing.
bool option_value(const std::vector<std::string>& args, size_t* i, const std::string& name,
                  std::string* value);
// "Name: value" -> header; false on a header without ':' or with CR/LF.
bool parse_header_arg(const std::string& s, std::string* name, std::string* value);
int usage_error(const char* cmd, const std::string& msg);

// --- output ---------------------------------------------------------------------

std::string human_bytes(uint64_t n);    // "0 B", "1023 B", "4.0 MiB"
std::string human_age(double seconds);  // "12s", "5m03s", "2h04m", "3d05h"
// The first 300 bytes of an error answer's body on one line, for a message.
std::string excerpt(const std::string& body);
void print_json(const cJSON* o);  // one line on stdout

// A text table: columns padded to their widest cell, two spaces apart; the
// last column is not padded.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  size_t rows() const { return rows_.size() - 1; }
  void print(FILE* out) const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// A one-line progress bar redrawn on stderr at most ten times a second when
// stderr is a terminal; silent otherwise (and with enabled false).
class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled);
  ~Progress();
  void update(uint64_t done);
  // Clears the bar's line; the caller prints its own summary.
  void finish();

 private:
  void draw(bool force);
  std::string label_;
  uint64_t total_, done_ = 0;
  bool on_;
  double start_, last_draw_ = 0;
  size_t drawn_ = 0;
};

double now_seconds();  // monotonic

}  // namespace shoal::ctl
