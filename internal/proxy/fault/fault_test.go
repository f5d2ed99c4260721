package fault

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func headers(kv ...string) Lookup {
	return func(name string) (string, bool) {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == name {
				return kv[i+1], true
			}
		}
		return "", false
	}
}

func seeded(seed uint64) func() uint64 { return rand.New(rand.NewPCG(seed, seed+1)).Uint64 }

func mustNew(t testing.TB, c Config) *Filter {
	t.Helper()
	f, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPercentages(t *testing.T) {
	const n = 100_000
	tests := []struct {
		name string
		p    Percent
	}{
		{"zero", Percent{0, Hundred}},
		{"all", Percent{100, Hundred}},
		{"half", Percent{50, Hundred}},
		{"25.5% per ten thousand", Percent{2550, TenThousand}},
		{"0.5% per million", Percent{5000, Million}},
		{"0.0001% per million", Percent{1, Million}},
		{"all per million", Percent{1_000_000, Million}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := mustNew(t, Config{
				Delay: &Delay{Fixed: time.Second, Percent: tt.p},
				Abort: &Abort{HTTPStatus: 503, Percent: tt.p},
				Rand:  seeded(42),
			})
			var delays, aborts int
			for range n {
				d := f.Decide(headers())
				if d.Delay > 0 {
					delays++
				}
				if d.HTTPStatus != 0 {
					aborts++
				}
				if d.Active() {
					f.Done()
				}
			}
			p := float64(tt.p.Numerator) / float64(tt.p.Denominator.value())
			mean := n * p
			// Five standard deviations of the binomial, and at least 5 so
			// that a share of 0.1 expected hits allows a few.
			slack := max(5, 5*math.Sqrt(n*p*(1-p)))
			for what, got := range map[string]int{"delays": delays, "aborts": aborts} {
				if math.Abs(float64(got)-mean) > slack {
					t.Errorf("%s %s: %d of %d, want %.1f ± %.1f", tt.p, what, got, n, mean, slack)
				}
			}
			if st := f.Stats(); st.Active != 0 || st.Delays != uint64(delays) || st.Aborts != uint64(aborts) {
				t.Errorf("Stats() = %+v, want 0 active, %d delays, %d aborts", st, delays, aborts)
			}
		})
	}
}

func TestPercentResolution(t *testing.T) {
	// A draw hits when it falls in the first Numerator of Denominator.
	var draw uint64
	f := mustNew(t, Config{Abort: &Abort{GRPCStatus: 14, Percent: Percent{1, Million}}, Rand: func() uint64 { return draw }})
	for _, tt := range []struct {
		draw uint64
		want Decision
	}{
		{0, Decision{GRPCStatus: 14}},
		{1, Decision{}},
		{999_999, Decision{}},
		{3_000_000, Decision{GRPCStatus: 14}},
	} {
		draw = tt.draw
		if got := f.Decide(headers()); got != tt.want {
			t.Errorf("draw %d: Decide = %+v, want %+v", tt.draw, got, tt.want)
		} else if got.Active() {
			f.Done()
		}
	}
}

func TestHeaderMatching(t *testing.T) {
	tests := []struct {
		name    string
		matches []HeaderMatch
		req     Lookup
		want    bool
	}{
		{"no matchers", nil, headers(), true},
		{"exact", []HeaderMatch{{Name: "x-chaos", Value: "on"}}, headers("x-chaos", "on"), true},
		{"exact other value", []HeaderMatch{{Name: "x-chaos", Value: "on"}}, headers("x-chaos", "onx"), false},
		{"exact absent", []HeaderMatch{{Name: "x-chaos", Value: "on"}}, headers(), false},
		{"name lower-cased", []HeaderMatch{{Name: "X-Chaos", Value: "on"}}, headers("x-chaos", "on"), true},
		{"prefix", []HeaderMatch{{Name: "user-agent", Kind: MatchPrefix, Value: "test/"}}, headers("user-agent", "test/1.0"), true},
		{"prefix miss", []HeaderMatch{{Name: "user-agent", Kind: MatchPrefix, Value: "test/"}}, headers("user-agent", "curl"), false},
		{"present empty value", []HeaderMatch{{Name: "x-debug", Kind: MatchPresent}}, headers("x-debug", ""), true},
		{"present absent", []HeaderMatch{{Name: "x-debug", Kind: MatchPresent}}, headers(), false},
		{"inverted absent", []HeaderMatch{{Name: "x-debug", Kind: MatchPresent, Invert: true}}, headers(), true},
		{"inverted exact", []HeaderMatch{{Name: "x-env", Value: "prod", Invert: true}}, headers("x-env", "prod"), false},
		{"all must match", []HeaderMatch{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}, headers("a", "1", "b", "3"), false},
		{"all match", []HeaderMatch{{Name: "a", Value: "1"}, {Name: "b", Value: "2"}}, headers("a", "1", "b", "2"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := mustNew(t, Config{Abort: &Abort{HTTPStatus: 500, Percent: Percent{100, Hundred}}, Headers: tt.matches})
			d := f.Decide(tt.req)
			if d.Active() != tt.want {
				t.Fatalf("Decide = %+v, want a fault: %v", d, tt.want)
			}
		})
	}
}

func TestMaxActive(t *testing.T) {
	f := mustNew(t, Config{Delay: &Delay{Fixed: time.Millisecond, Percent: Percent{100, Hundred}}, MaxActive: 2})
	for i := range 2 {
		if !f.Decide(headers()).Active() {
			t.Fatalf("fault %d under the cap of 2 not injected", i)
		}
	}
	if d := f.Decide(headers()); d.Active() {
		t.Fatalf("third fault with 2 active = %+v, want none", d)
	}
	f.Done()
	if !f.Decide(headers()).Active() {
		t.Fatal("fault after one ended not injected")
	}
	want := Stats{Active: 2, Delays: 3, Overflow: 1}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Fatalf("Stats (-want +got):\n%s", diff)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	f := mustNew(t, Config{
		Delay:   &Delay{Fixed: time.Millisecond, Percent: Percent{50, Hundred}},
		Abort:   &Abort{HTTPStatus: 503, Percent: Percent{50, Hundred}},
		Headers: []HeaderMatch{{Name: "x-chaos", Kind: MatchPrefix, Value: "o"}},
	})
	lookup := headers("x-chaos", "on")
	if n := testing.AllocsPerRun(1000, func() {
		if f.Decide(lookup).Active() {
			f.Done()
		}
	}); n != 0 {
		t.Fatalf("Decide allocates %v times a call, want 0", n)
	}
}

func TestNewErrors(t *testing.T) {
	_, err := New(Config{
		Delay:     &Delay{Fixed: 0, Percent: Percent{101, Hundred}},
		Abort:     &Abort{HTTPStatus: 503, GRPCStatus: 14, Percent: Percent{1, Denominator(9)}},
		Headers:   []HeaderMatch{{Name: ""}},
		MaxActive: -1,
	})
	if err == nil {
		t.Fatal("New accepted an invalid config")
	}
	for _, want := range []string{
		"delay.fixed: invalid value 0s: must be positive",
		"delay.percent.numerator: invalid value 101: must be at most 100",
		"abort: httpStatus 503 and grpcStatus 14: must set only one",
		"abort.percent.denominator: invalid value 9",
		"headers[0].name: must not be empty",
		"maxActive: invalid value -1",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %q", err, want)
		}
	}
	for _, tt := range []struct {
		c    Config
		want string
	}{
		{Config{}, "delay, abort: must set at least one"},
		{Config{Abort: &Abort{}}, "abort: must set httpStatus or grpcStatus"},
		{Config{Abort: &Abort{HTTPStatus: 600}}, "abort.httpStatus: invalid value 600"},
		{Config{Abort: &Abort{GRPCStatus: 17}}, "abort.grpcStatus: invalid value 17"},
	} {
		if _, err := New(tt.c); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tt.c, err, tt.want)
		}
	}
}

func TestPercentString(t *testing.T) {
	for p, want := range map[Percent]string{
		{50, Hundred}: "50%", {2550, TenThousand}: "25.5%", {1, Million}: "0.0001%",
	} {
		if got := p.String(); got != want {
			t.Errorf("%#v.String() = %q, want %q", p, got, want)
		}
	}
}

// FuzzNew checks the validator on arbitrary numbers: no panic, and a
// config it accepts decides only faults it configured.
func FuzzNew(f *testing.F) {
	f.Add(int64(time.Second), uint32(50), uint8(0), 503, 0, uint32(1), uint8(2), 3, uint64(7))
	f.Add(int64(-1), uint32(101), uint8(9), 0, 17, uint32(0), uint8(0), -1, uint64(0))
	f.Fuzz(func(t *testing.T, delay int64, dn uint32, dd uint8, httpStatus, grpcStatus int, an uint32, ad uint8, maxActive int, draw uint64) {
		c := Config{
			Delay:     &Delay{Fixed: time.Duration(delay), Percent: Percent{dn, Denominator(dd)}},
			Abort:     &Abort{HTTPStatus: httpStatus, GRPCStatus: grpcStatus, Percent: Percent{an, Denominator(ad)}},
			MaxActive: maxActive,
			Rand:      func() uint64 { return draw },
		}
		fl, err := New(c)
		if err != nil {
			return
		}
		d := fl.Decide(headers())
		if d.Delay != 0 && d.Delay != c.Delay.Fixed {
			t.Fatalf("delay %v, configured %v", d.Delay, c.Delay.Fixed)
		}
		if d.HTTPStatus != 0 && d.HTTPStatus != httpStatus || d.GRPCStatus != 0 && d.GRPCStatus != grpcStatus {
			t.Fatalf("abort %+v, configured http %d grpc %d", d, httpStatus, grpcStatus)
		}
	})
}

func BenchmarkDecide(b *testing.B) {
	f := mustNew(b, Config{
		Delay:   &Delay{Fixed: time.Millisecond, Percent: Percent{10, Hundred}},
		Abort:   &Abort{HTTPStatus: 503, Percent: Percent{1, TenThousand}},
		Headers: []HeaderMatch{{Name: "x-chaos", Value: "on"}},
	})
	lookup := headers("x-chaos", "on")
	b.ReportAllocs()
	for b.Loop() {
		if f.Decide(lookup).Active() {
			f.Done()
		}
	}
}
