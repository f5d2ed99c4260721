package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

func newTestKeyed(t *testing.T, maxKeys int) (*Keyed, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	k, err := NewKeyed(KeyedConfig{Bucket: BucketConfig{Rate: 1, Burst: 2, Now: clk.Now}, MaxKeys: maxKeys})
	if err != nil {
		t.Fatal(err)
	}
	return k, clk
}

func TestKeyedSeparateBuckets(t *testing.T) {
	k, clk := newTestKeyed(t, 0)
	for _, key := range []string{"spiffe://a", "spiffe://b"} {
		for i := range 2 {
			if ok, _ := k.Allow(key); !ok {
				t.Fatalf("%s: take %d of a burst of 2 refused", key, i)
			}
		}
		if ok, retry := k.Allow(key); ok || retry != time.Second {
			t.Fatalf("%s: third take = %v, %v; want false, 1s", key, ok, retry)
		}
	}
	clk.Advance(time.Second)
	if ok, _ := k.Allow("spiffe://a"); !ok {
		t.Fatal("spiffe://a: refused after a second's refill")
	}
}

func TestKeyedBoundedKeys(t *testing.T) {
	// 160 keys: 10 per shard. A client sending random header values gets
	// new keys refused once shards are full of busy buckets, and every
	// such key shares the overflow bucket.
	const maxKeys = 160
	k, clk := newTestKeyed(t, maxKeys)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		key := strconv.FormatUint(rng.Uint64(), 36)
		k.Allow(key) // drains one token: the bucket is no longer full
		if k.Len() > maxKeys {
			t.Fatalf("Len() = %d after a new key, want at most %d", k.Len(), maxKeys)
		}
		clk.Advance(time.Microsecond)
	}
	if n := k.Len(); n < maxKeys/2 {
		t.Fatalf("Len() = %d, want shards mostly filled", n)
	}
	// The overflow bucket (burst 2) took the flood beyond the cap.
	if ok, _ := k.overflow.take(&k.p, k.p.clock(), 1); ok {
		t.Fatal("overflow bucket still had tokens after a flood of random keys")
	}

	// Once the buckets refill, a new key's arrival sweeps its shard and
	// gets its own bucket again. Shards are chosen by a per-process hash
	// seed and sweep at most once a second, so a shard receiving more new
	// keys than its share (10) plus the overflow's burst (2) within that
	// second would refuse the rest by design: 40 keys over 16 shards (2.5
	// on average) keep every shard far below that, whatever the seed.
	clk.Advance(10 * time.Second)
	for i := range 40 {
		key := fmt.Sprintf("late-%d", i)
		if ok, _ := k.Allow(key); !ok {
			t.Fatalf("%s: refused after every bucket refilled", key)
		}
	}
	if n := k.Len(); n > maxKeys {
		t.Fatalf("Len() = %d, want at most %d", n, maxKeys)
	}
}

func TestKeyedSweepKeepsBusyKeys(t *testing.T) {
	// A busy key (drained bucket) survives a sweep; its limit is not reset
	// by a flood of other keys.
	k, clk := newTestKeyed(t, 16) // one key per shard
	k.Allow("busy")
	k.Allow("busy")
	clk.Advance(2 * time.Second) // let the sweep clock pass, busy refills 2
	k.Allow("busy")
	k.Allow("busy")
	for i := range 1000 {
		k.Allow(fmt.Sprintf("flood-%d", i))
	}
	if ok, _ := k.Allow("busy"); ok {
		t.Fatal("busy key's drained bucket was reset by a flood of new keys")
	}
}

func TestNewKeyedErrors(t *testing.T) {
	_, err := NewKeyed(KeyedConfig{Bucket: BucketConfig{Rate: 1, Burst: 1}, MaxKeys: -1})
	if err == nil || !strings.Contains(err.Error(), "maxKeys: invalid value -1") {
		t.Fatalf("NewKeyed(maxKeys -1) = %v, want a maxKeys error", err)
	}
	_, err = NewKeyed(KeyedConfig{Bucket: BucketConfig{Rate: 1}})
	if err == nil || !strings.Contains(err.Error(), "keyed rate limit: bucket: burst: invalid value 0") {
		t.Fatalf("NewKeyed(burst 0) = %v, want a bucket burst error", err)
	}
}
