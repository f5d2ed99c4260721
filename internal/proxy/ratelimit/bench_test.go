package ratelimit

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// The rate is high enough that most takes succeed, as on a healthy route;
// a refused take costs the same.
var benchBucket = BucketConfig{Rate: 1e8, Burst: 1000}

func BenchmarkBucketAllow(b *testing.B) {
	bk, err := NewBucket(benchBucket)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		bk.Allow()
	}
}

func BenchmarkBucketAllowParallel(b *testing.B) {
	bk, err := NewBucket(benchBucket)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bk.Allow()
		}
	})
}

func benchKeys() []string {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = "spiffe://verge.local/ns/default/sa/client-" + strconv.Itoa(i)
	}
	return keys
}

func BenchmarkKeyedAllow1000Keys(b *testing.B) {
	k, err := NewKeyed(KeyedConfig{Bucket: benchBucket})
	if err != nil {
		b.Fatal(err)
	}
	keys := benchKeys()
	for _, key := range keys {
		k.Allow(key)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k.Allow(keys[i%len(keys)])
		i++
	}
}

func BenchmarkKeyedAllow1000KeysParallel(b *testing.B) {
	k, err := NewKeyed(KeyedConfig{Bucket: benchBucket})
	if err != nil {
		b.Fatal(err)
	}
	keys := benchKeys()
	for _, key := range keys {
		k.Allow(key)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7919))
		for pb.Next() {
			k.Allow(keys[i%len(keys)])
			i++
		}
	})
}

func BenchmarkShedderAcquire(b *testing.B) {
	s, err := NewShedder(ShedConfig{Limit: 1 << 20, MaxQueue: 100, MaxWait: time.Second, Classes: 3})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		release, err := s.Acquire(ctx, 1)
		if err != nil {
			b.Fatal(err)
		}
		release()
	}
}

func BenchmarkShedderAcquireParallel(b *testing.B) {
	s, err := NewShedder(ShedConfig{Limit: 1 << 20, MaxQueue: 100, MaxWait: time.Second, Classes: 3})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			release, err := s.Acquire(ctx, 1)
			if err != nil {
				b.Error(err)
				return
			}
			release()
		}
	})
}
