// shoalctl: talks to a running shoald over its admin socket, and downloads
// and preheats through it. The commands live in userspace/ctl/.
#include "shoal/ctl/ctl.h"

int main(int argc, char** argv) { return shoal::ctl::main(argc, argv); }
