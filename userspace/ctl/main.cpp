// shoalctl's entry point: global options, the command table, help texts.
#include <cstdlib>
#include <cstring>

#include "shoal/ctl/ctl.h"

namespace shoal::ctl {

namespace {

constexpr const char* kDefaultSocket = "/run/shoal/shoald.sock";

constexpr const char* kExitCodes =
    "Exit codes:\n"
    "  0  ok\n"
    "  1  failed: shoald answered with an error, a download failed (HTTP error,\n"
    "     network, TLS), a configuration has errors, preheat left blobs uncached\n"
    "  2  usage error\n"
    "  3  shoald cannot be reached on its admin socket\n"
    "  4  digest mismatch: the bytes do not hash to the digest the URL or REF names\n"
    "  5  cannot write the output file\n"
    "  run exits with CMD's status (126: CMD cannot run, 127: CMD not found).\n";

const Command kCommands[] = {
    {"status", "daemon up, version, mode, listeners, cgroups, store, peers, counters",
     "usage: shoalctl status [--json]\n"
     "\n"
     "Shows the running daemon: version, uptime, configuration file, mode\n"
     "(explicit, transparent), listeners, attached cgroups, the task store (size,\n"
     "task count), P2P (advertised address, schedulers and whether they answer),\n"
     "active connections and every counter.\n",
     cmd_status},
    {"tasks", "in-flight and stored tasks: size, progress, bytes by source, age",
     "usage: shoalctl tasks [--active | --stored] [--limit N] [ID-PREFIX...]\n"
     "\n"
     "Lists the tasks of the daemon: downloads in flight first (state, bytes so far),\n"
     "then the complete ones in the store, newest first. Columns: task id (a blob's\n"
     "or manifest's sha256 digest, else the sha256 of its normalized URL), state,\n"
     "size, progress, bytes by source (ORIGIN: fetched from the registry, PEER: from\n"
     "other Shoal peers, REUSE: served again from this host's store), age (since the\n"
     "download started), and the URL without its query.\n"
     "Bytes by source are counted from the daemon's start; tasks stored before it\n"
     "show '-'.\n"
     "\n"
     "  --active        in-flight downloads only\n"
     "  --stored        stored tasks only\n"
     "  --limit N       at most N stored tasks (default 50 in a table, all with --json)\n"
     "  ID-PREFIX       only tasks whose id (or sha256:id) starts with it\n",
     cmd_tasks},
    {"get", "download URL through the local daemon (and its P2P network) into FILE",
     "usage: shoalctl get URL -O FILE [--header 'Name: value']... [options]\n"
     "\n"
     "Downloads URL through the local shoald, like Dragonfly's dfget: the request goes\n"
     "to the daemon's explicit proxy (a CONNECT tunnel for https://, which shoald\n"
     "intercepts for its hijackHTTPS hosts; an absolute-URI request for http://), so a\n"
     "URL its proxies rules route to P2P comes from peers and lands in its store.\n"
     "The file is written to FILE.tmp and renamed to FILE once complete (and\n"
     "verified); FILE '-' writes to stdout. When the URL names a digest\n"
     "(/blobs/sha256:..., /manifests/sha256:...) or --digest gives one, the bytes are\n"
     "checked against it. A progress bar goes to stderr when it is a terminal.\n"
     "\n"
     "  -O, --output FILE    where to write (required)\n"
     "  -H, --header H       request header 'Name: value' (repeatable), e.g.\n"
     "                       'Authorization: Bearer TOKEN' for a private registry\n"
     "  --digest sha256:HEX  expected digest of the body\n"
     "  --proxy HOST:PORT    proxy to use (default: the daemon's, from the admin socket,\n"
     "                       else $SHOAL_PROXY, else --config's proxy.tcpListen)\n"
     "  --config FILE        shoald's configuration, read when the daemon does not\n"
     "                       answer (default /etc/shoal/shoald.yaml)\n"
     "  --cacert FILE        also trust this CA (repeatable); the site CA\n"
     "                       (hijackHTTPS.cert) and the system store are always trusted\n"
     "  --timeout SECONDS    give up after this long without data (default 60)\n"
     "  -q, --quiet          no progress bar and no summary\n"
     "\n"
     "Exit codes: 1 HTTP error status or transfer failure, 4 digest mismatch, 5 FILE\n"
     "cannot be written; see shoalctl --help.\n",
     cmd_get},
    {"preheat", "fetch an image's manifest and blobs into the cluster ahead of a job",
     "usage: shoalctl preheat REF [--header 'Name: value']... [options]\n"
     "\n"
     "Fetches an image's manifest, config and layers through the local shoald, so\n"
     "they land in its store and are announced to the cluster's P2P network: later\n"
     "pulls on any node come from peers, not from the registry. Run it on a login\n"
     "node or in a Slurm prolog before a job array starts.\n"
     "\n"
     "REF: docker://HOST/REPO:TAG, oras://HOST/REPO:TAG, HOST/REPO:TAG,\n"
     "     HOST/REPO@sha256:HEX (docker.io when HOST is left out; :latest when\n"
     "     neither tag nor digest is given).\n"
     "\n"
     "The manifest is fetched by tag, then by digest (which shoald caches); for an\n"
     "index the linux/amd64 image is chosen (--platform, --all-platforms). Registry\n"
     "authentication follows the 401 Bearer challenge (an anonymous token, or with\n"
     "--header 'Authorization: Basic ...' for the token service); a given\n"
     "'Authorization: Bearer ...' header is sent to the registry as is. Every blob is\n"
     "verified against its digest. With access to the admin socket, preheat then\n"
     "checks that shoald stored each blob and reports where its bytes came from.\n"
     "\n"
     "  -H, --header H        request header (repeatable)\n"
     "  --platform OS/ARCH[/VARIANT]  which image of an index (default linux/amd64)\n"
     "  --all-platforms       every image of an index\n"
     "  --plain-http          talk http:// to the registry\n"
     "  --proxy, --config, --cacert, --timeout, -q: as for get\n"
     "\n"
     "Exit codes: 1 a fetch failed or a blob was not stored by shoald, 4 digest\n"
     "mismatch; see shoalctl --help.\n",
     cmd_preheat},
    {"gc", "run the store's garbage collection now and print what it freed",
     "usage: shoalctl gc [--json]\n"
     "\n"
     "Runs the task store's GC now (it also runs every minute): removes tasks not\n"
     "used for storage.taskExpireTime, then the least recently used ones while the\n"
     "store is over storage.diskGCThreshold. Tasks being served are kept. Prints each\n"
     "removed task and the bytes freed.\n",
     cmd_gc},
    {"check-config", "validate a configuration file (works without a daemon)",
     "usage: shoalctl check-config FILE [--json]\n"
     "\n"
     "Loads FILE with shoald's own loader (YAML, every key, regexes compiled with\n"
     "Hyperscan, the hijack CA loaded) and prints every problem as\n"
     "FILE:LINE:COL: key.path: message, or 'ok' with a summary. Needs no daemon.\n"
     "Exit code 1 when FILE has errors (warnings alone are ok).\n",
     cmd_check_config},
    {"reload", "reload the daemon's configuration (like SIGHUP)",
     "usage: shoalctl reload\n"
     "\n"
     "Asks shoald to load its configuration file again; a file with errors is\n"
     "refused and the running configuration kept (see the daemon's log).\n",
     cmd_reload},
    {"attach", "intercept a cgroup and everything below it",
     "usage: shoalctl attach PATH\n"
     "\n"
     "Intercepts the cgroup PATH (absolute, or relative to the cgroup v2 mount) and\n"
     "every cgroup below it: their TCP connects to transparent.ports reach shoald.\n",
     cmd_attach},
    {"detach", "stop intercepting a cgroup",
     "usage: shoalctl detach PATH\n"
     "\n"
     "Stops intercepting the cgroup PATH (as given to attach).\n",
     cmd_detach},
    {"run", "run a command in a new job cgroup that shoald intercepts",
     "usage: shoalctl run [--cgroup NAME] -- CMD [ARGS...]\n"
     "\n"
     "Runs CMD (as you) in a new job cgroup below transparent.jobParent that shoald\n"
     "intercepts, and exits with CMD's status. Open to every local user.\n"
     "\n"
     "  --cgroup NAME   name of the job cgroup (default: generated)\n",
     cmd_run},
    {"cleanup", "remove empty job cgroups and stale iptables rules",
     "usage: shoalctl cleanup\n"
     "\n"
     "Removes empty Shoal job cgroups and the iptables rules a killed shoald left.\n"
     "Works without the daemon too.\n",
     cmd_cleanup},
};

void usage(FILE* out) {
  fprintf(out,
          "usage: shoalctl [--socket PATH] [--json] COMMAND [ARGS]\n"
          "       shoalctl COMMAND --help\n"
          "\n"
          "Commands:\n");
  for (const Command& c : kCommands) fprintf(out, "  %-13s %s\n", c.name, c.summary);
  fprintf(out,
          "\n"
          "Options (before or after the command):\n"
          "  --socket PATH   admin socket (default %s, or $SHOAL_ADMIN_SOCKET)\n"
          "  --json          machine-readable output: one JSON object on stdout\n"
          "  -h, --help      this text; after a command, that command's help\n"
          "  -V, --version   shoalctl's version\n"
          "\n"
          "%s",
          kDefaultSocket, kExitCodes);
}

}  // namespace

int main(int argc, char** argv) {
  Global g;
  g.socket = getenv("SHOAL_ADMIN_SOCKET") ? getenv("SHOAL_ADMIN_SOCKET") : kDefaultSocket;
  const Command* cmd = nullptr;
  std::vector<std::string> rest;
  bool help = false, after_dashes = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (after_dashes) {
      rest.push_back(a);
      continue;
    }
    if (a == "--" && cmd) {
      after_dashes = true;
      rest.push_back(a);
    } else if (a == "-h" || a == "--help") {
      help = true;
    } else if ((a == "-V" || a == "--version") && !cmd) {
      printf("shoalctl %s\n", SHOAL_VERSION);
      return kExitOk;
    } else if (a == "--json") {
      g.json = true;
    } else if (a == "--socket" || a.rfind("--socket=", 0) == 0) {
      std::vector<std::string> v(argv + i, argv + argc);
      size_t k = 0;
      if (!option_value(v, &k, "--socket", &g.socket)) return kExitUsage;
      i += static_cast<int>(k);
    } else if (!cmd) {
      if (!a.empty() && a[0] == '-') {
        fprintf(stderr, "shoalctl: unknown option '%s' (see shoalctl --help)\n", a.c_str());
        return kExitUsage;
      }
      for (const Command& c : kCommands)
        if (a == c.name) cmd = &c;
      if (!cmd) {
        fprintf(stderr, "shoalctl: unknown command '%s' (see shoalctl --help)\n", a.c_str());
        return kExitUsage;
      }
    } else {
      rest.push_back(a);
    }
  }
  if (help) {
    if (cmd) {
      fputs(cmd->help, stdout);
      printf("\nGlobal options: --socket PATH, --json (see shoalctl --help).\n");
    } else {
      usage(stdout);
    }
    return kExitOk;
  }
  if (!cmd) {
    usage(stderr);
    return kExitUsage;
  }
  return cmd->run(g, rest);
}

}  // namespace shoal::ctl
