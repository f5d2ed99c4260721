// Package memtrim keeps the proxy's resident memory close to its working set
// on small devices. It owns one operation: dropping the resident pages of the
// process's own executable, which start-up and configuration changes touch
// once and then no longer need.
//
// Why: registering the Envoy and gRPC protobuf descriptors at init reads
// through most of the binary's read-only data, and the kernel's fault-around
// maps up to 16 neighbouring pages per fault, so a freshly started
// verge-proxy shows ~13 MiB of its binary resident while its working set is a
// fraction of that. Trim releases the resident pages of the executable's
// read-only mappings; what the proxy still uses faults back in from the page
// cache on first use (a minor fault, no I/O while the file stays cached).
// Writable mappings are never touched, and neither is a position-independent
// executable, whose read-only RELRO pages hold relocations the loader wrote:
// dropping them would reload unrelocated bytes from the file. No kept library
// does this, hence the hand-written code.
package memtrim
