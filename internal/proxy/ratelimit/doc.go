// Package ratelimit owns the proxy's local admission controls: token
// buckets (per route, per source identity or per header value), priority
// shedding under overload, and byte-rate limits on TCP connections. It
// holds no configuration types of the API and does no I/O besides the
// copy loop of Copy; the proxy compiles its snapshot into these values
// once and calls them per request or connection. It does not own the
// response (429, 503, RESOURCE_EXHAUSTED, retry-after): the proxy writes
// it from what these calls return. Distributed (global) rate limiting is
// not here.
//
// # How the proxy calls it
//
// Request rate, one limit per route (compiled once per snapshot):
//
//	b, err := ratelimit.NewBucket(ratelimit.BucketConfig{Rate: 100, Burst: 20})
//	...
//	if ok, wait := b.Allow(); !ok {
//		// 429 (gRPC: RESOURCE_EXHAUSTED) with retry-after: RetryAfterSeconds(wait)
//	}
//
// Per source identity or per header value: a Keyed limiter, called with
// the SPIFFE ID or the header's value as key. Its key set is bounded (see
// Keyed), so random header values cannot exhaust memory.
//
//	if ok, wait := k.Allow(peerID); !ok { ... }
//
// Priority shedding, one Shedder per listener or cluster; the class comes
// from the route or a header, 0 being the most important. Reserve a slot
// or two for class 0 (ShedConfig.Reserved) so that critical requests are
// admitted at once even when bulk traffic holds every other slot:
//
//	release, err := s.Acquire(ctx, class)
//	if err != nil {
//		// ErrShed, ErrQueueTimeout or ctx's error: 503 (gRPC: UNAVAILABLE)
//	}
//	defer release()
//
// Bandwidth of TCP connections, one Bucket (in bytes) per service shared
// by all of its connections, each direction copied with Copy instead of
// io.Copy:
//
//	go func() { ratelimit.Copy(ctx, upstream, downstream, lim) }()
//
// Allow on a Bucket or a Keyed limiter (for a key already present), and
// Acquire when admitted at once, do not allocate.
package ratelimit
