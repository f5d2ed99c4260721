// Package backoff owns the retry delay policy of the proxy's reconnecting
// loops (xDS stream, workload registration, listeners that failed to bind):
// exponential growth from a base, a hard cap, and jitter. It does not sleep
// or retry by itself; callers wait on the delays it returns.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff computes successive retry delays. The zero value is not usable:
// set Base and Max. A Backoff is not safe for concurrent use; each retry
// loop owns its own.
type Backoff struct {
	// Base is the delay bound of the first attempt.
	Base time.Duration
	// Max caps every delay: Next never returns more.
	Max time.Duration

	attempt int
}

// Next returns the delay before the next attempt: a bound d doubling from
// Base up to Max, and a delay drawn uniformly from [d/2, d] ("equal
// jitter"). The random half spreads many proxies restarting together; the
// fixed half keeps a failing loop from retrying at once.
func (b *Backoff) Next() time.Duration {
	d := b.Max
	// Past 30 doublings any sane Base exceeds Max; the bound keeps the
	// shift from overflowing.
	if b.attempt < 30 {
		d = min(b.Base<<b.attempt, b.Max)
	}
	b.attempt++
	half := d / 2
	return half + rand.N(d-half+1)
}

// Reset starts the sequence again from Base, after a success.
func (b *Backoff) Reset() { b.attempt = 0 }
