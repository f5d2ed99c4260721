// Package memtrim keeps the proxy's resident memory close to its working set
// on small devices. It owns one operation: dropping the pages of the process's
// own executable that start-up touched once and will not touch again.
//
// Why: registering the Envoy and gRPC protobuf descriptors at init reads
// through most of the binary's read-only data once, and the kernel's
// fault-around maps up to 16 neighbouring pages per fault, so a freshly
// started verge-proxy shows ~13 MiB of its binary resident while its working
// set is a fraction of that. Trim marks the read-only mappings of the
// executable random-access (no fault-around, no read-ahead) and releases
// their resident pages; what the proxy still uses faults back in from the page
// cache on first use. Writable mappings are never touched, so no state is
// lost. No kept library does this, hence the hand-written code.
package memtrim
