package balancer

import (
	"testing"
	"time"

	"verge.dev/verge/internal/proxy/config"
)

// BenchmarkPick measures one pick and its Done per algorithm over 100
// endpoints, through New (the *Priority the proxy holds) as the proxy calls
// it, sequentially and from parallel goroutines. The floor is
// 200 ns a pick.
func BenchmarkPick(b *testing.B) {
	uniform := make([]uint32, 100)
	weighted := make([]uint32, 100)
	for i := range uniform {
		uniform[i] = 1
		weighted[i] = uint32(i%5 + 1)
	}
	threeLevels := make([]uint32, 100)
	for i := range threeLevels {
		threeLevels[i] = uint32(i % 3)
	}
	cases := []struct {
		name   string
		policy config.LBPolicy
		eps    []config.Endpoint
		hash   bool
		// eject ejects every tenth endpoint: with three levels of 33, level
		// 0 then sits at 90% healthy and the loads are computed per pick.
		eject bool
		rtt   bool
	}{
		{name: "round_robin", policy: config.LBRoundRobin, eps: eps(uniform...)},
		{name: "round_robin_weighted", policy: config.LBRoundRobin, eps: eps(weighted...)},
		{name: "least_request", policy: config.LBLeastRequest, eps: eps(uniform...)},
		{name: "least_request_weighted", policy: config.LBLeastRequest, eps: eps(weighted...)},
		{name: "ring_hash", policy: config.LBRingHash, eps: eps(weighted...), hash: true},
		{name: "maglev", policy: config.LBMaglev, eps: eps(weighted...), hash: true},
		{name: "peak_ewma", policy: config.LBPeakEWMA, eps: eps(uniform...), rtt: true},
		{name: "priority_3_levels_round_robin", policy: config.LBRoundRobin, eps: prioEps(threeLevels), eject: true},
		{name: "priority_3_levels_ring_hash", policy: config.LBRingHash, eps: prioEps(threeLevels), eject: true, hash: true},
	}
	for _, c := range cases {
		setup := func(b *testing.B) Balancer {
			bal := New(c.policy, c.eps)
			if c.eject {
				for i, e := range bal.Endpoints() {
					if i%10 == 0 {
						e.SetEjected(true)
					}
				}
			}
			b.ReportAllocs()
			return bal
		}
		pick := func(bal Balancer, i uint64) {
			var e *Endpoint
			if c.hash {
				e = bal.(HashPicker).PickHash(i * 0x9e3779b97f4a7c15)
			} else {
				e = bal.Pick()
			}
			if c.rtt {
				e.DoneRTT(time.Millisecond + time.Duration(i%1000)*time.Microsecond)
			} else {
				e.Done()
			}
		}
		b.Run(c.name, func(b *testing.B) {
			bal := setup(b)
			var i uint64
			for b.Loop() {
				i++
				pick(bal, i)
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			bal := setup(b)
			b.RunParallel(func(pb *testing.PB) {
				var i uint64
				for pb.Next() {
					i++
					pick(bal, i)
				}
			})
		})
	}
}
