// The scheduler role (`shoald scheduler`): peers register, announce the
// pieces they hold, ask for parents, report piece results and heartbeat;
// the scheduler answers with ranked parents and hands pieces nobody holds to
// one downloading peer each for back-to-source. See shoal/p2p/protocol.h for
// the messages and design.md section 5 for the policy.
#pragma once

namespace shoal::scheduler {

// `shoald scheduler [options]`: argv[0] is "scheduler". Parses its own
// options (--listen ADDR:PORT, --cluster-secret-file FILE, -c FILE,
// --log-dir DIR, --help), runs until SIGTERM/SIGINT, returns the exit code
// (2 for usage and configuration errors).
int main(int argc, char** argv);

}  // namespace shoal::scheduler
