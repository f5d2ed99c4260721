package ratelimit

import (
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultMaxKeys is Keyed's key cap when KeyedConfig.MaxKeys is 0.
	DefaultMaxKeys = 10_000
	// keyedShards spreads keys over independently locked maps so that
	// parallel requests for different keys rarely meet on one mutex.
	keyedShards = 16
	// sweepEvery bounds how often a full shard scans for full buckets, so
	// that a flood of new keys over a shard of busy ones costs one scan a
	// second instead of one per request.
	sweepEvery = time.Second
)

// KeyedConfig configures a Keyed limiter.
type KeyedConfig struct {
	// Bucket is every key's bucket, and the overflow bucket's.
	Bucket BucketConfig
	// MaxKeys caps the keys held at once; 0 means DefaultMaxKeys.
	MaxKeys int
}

// Keyed holds one token bucket per key (a source identity, a header's
// value) with a bounded number of keys, safe for concurrent use.
//
// Memory is bounded this way: a bucket that has refilled to Burst is the
// same as a new one, so dropping it loses nothing. When a new key arrives
// and its shard holds its share of MaxKeys, the shard drops its full
// buckets (at most once a second); if none was full, the new key is
// limited by the single overflow bucket shared by every key that did not
// fit. A client sending random keys thus gets at most one key's rate
// beyond the keys already held, and cannot push out active keys (an LRU
// would let it evict them and so reset their limits).
type Keyed struct {
	p        params
	perShard int
	seed     maphash.Seed
	overflow state
	shards   [keyedShards]keyedShard
}

type keyedShard struct {
	mu        sync.Mutex
	m         map[string]*state
	lastSweep int64
	// Pads a shard to its own cache lines so that shards do not share one.
	_ [40]byte
}

// NewKeyed returns an empty Keyed limiter. Errors name the field and the
// reason.
func NewKeyed(c KeyedConfig) (*Keyed, error) {
	if err := c.Bucket.validate(); err != nil {
		return nil, fmt.Errorf("keyed rate limit: bucket: %w", err)
	}
	if c.MaxKeys < 0 {
		return nil, fmt.Errorf("keyed rate limit: maxKeys: invalid value %d: must be at least 0", c.MaxKeys)
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMaxKeys
	}
	k := &Keyed{
		p:        newParams(c.Bucket),
		perShard: max(1, c.MaxKeys/keyedShards),
		seed:     maphash.MakeSeed(),
	}
	for i := range k.shards {
		// Start the sweep clock in the past so the first full shard sweeps.
		k.shards[i].lastSweep = -int64(sweepEvery)
		k.shards[i].m = make(map[string]*state)
	}
	return k, nil
}

// Allow takes one token from key's bucket, as Bucket.Allow. It does not
// allocate for a key it holds; a new key costs a copy of the key (so the
// caller may pass a string that aliases a reused request buffer) and a
// small bucket.
func (k *Keyed) Allow(key string) (ok bool, retryAfter time.Duration) {
	now := k.p.clock()
	sh := &k.shards[maphash.String(k.seed, key)%keyedShards]
	sh.mu.Lock()
	s := sh.m[key]
	if s == nil {
		s = k.addLocked(sh, key, now)
	}
	// Taking under the shard's lock keeps a concurrent sweep from dropping
	// the bucket between lookup and take (which would hand out a token).
	ok, retryAfter = s.take(&k.p, now, 1)
	sh.mu.Unlock()
	return ok, retryAfter
}

// addLocked returns a new bucket for key in sh, or the overflow bucket
// when sh is full of buckets that are not.
func (k *Keyed) addLocked(sh *keyedShard, key string, now int64) *state {
	if len(sh.m) >= k.perShard && now-sh.lastSweep >= int64(sweepEvery) {
		sh.lastSweep = now
		for key, s := range sh.m {
			if s.full(now) {
				delete(sh.m, key)
			}
		}
	}
	if len(sh.m) >= k.perShard {
		return &k.overflow
	}
	s := new(state)
	sh.m[strings.Clone(key)] = s
	return s
}

// Len returns the number of keys held (not counting the overflow bucket).
func (k *Keyed) Len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
