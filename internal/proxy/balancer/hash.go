package balancer

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"

	"verge.dev/verge/internal/proxy/config"
)

// Ring sizes as Envoy's ring_hash_lb_config defaults: the minimum keeps the
// lightest endpoint's share close to its weight, the maximum bounds memory
// (12 bytes an entry) when weights are very uneven.
const (
	DefaultRingMinSize = 1024
	MaxRingSize        = 8 << 20
)

// MaglevTableSize is the number of slots of a Maglev lookup table, a prime
// (Envoy's default). Keys spread over endpoints in steps of 1/65537; an
// endpoint set larger than the table leaves some endpoints without keys.
const MaglevTableSize = 65537

// HashString hashes a request key (header value, cookie, source address)
// for PickHash. It is stable across processes and versions of Go, so every
// Verge proxy sends a key to the same endpoint: FNV-1a 64 followed by a
// finalizer, because FNV alone spreads short, similar keys poorly in the
// high bits that ring lookups compare first. It does not allocate.
func HashString(s string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime
	}
	return mix64(h)
}

// mix64 is SplitMix64's finalizer: a bijection with full avalanche.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// RingHash is a Ketama-style consistent hash ring: every endpoint owns
// points of a ring in proportion to its weight and a hash goes to the owner
// of the first point at or after it. When one endpoint of N leaves, only the
// keys it owned (about 1/N) move. An ejected endpoint's keys go to the next
// points on the ring, as Envoy's do. Pick without a hash picks a random point.
type RingHash struct {
	// MinSize is the minimum number of ring entries (0: DefaultRingMinSize);
	// read by Update.
	MinSize uint64
	endpoints
	ring atomic.Pointer[ring]
}

// ring is the immutable lookup structure: points sorted by hash and, index
// by index, the endpoint (index into the table) owning each point.
type ring struct {
	t      *table
	hashes []uint64
	owners []uint32
}

// Update replaces the endpoint set, keeping the state of endpoints that stay.
func (b *RingHash) Update(eps []config.Endpoint) { b.update(eps, b.install) }

func (b *RingHash) install(eps []*Endpoint, weights []uint32, h *health) {
	t := &table{eps: eps, weights: weights, health: h}
	r := &ring{t: t}
	r.hashes, r.owners = buildRing(eps, weights, b.MinSize)
	b.ring.Store(r)
	b.table.Store(t)
}

// buildRing places the points. Each endpoint gets a number of points that
// depends only on its own weight: minSize/8 points per unit of weight
// (weights reduced by their greatest common divisor), so a ring of eight
// equal endpoints has minSize points and rings of more have more. Envoy
// instead scales every endpoint's points so the whole ring has about
// minSize, which re-deals points among the endpoints that stay whenever
// one leaves, moving their keys too; here when one of N endpoints leaves
// only its own keys (about 1/N) move. Endpoint i's points are its first
// w_i×q address-derived hashes. Past MaxRingSize q shrinks for everyone,
// and the lightest endpoints keep at least one point.
func buildRing(eps []*Endpoint, weights []uint32, minSize uint64) ([]uint64, []uint32) {
	if len(eps) == 0 {
		return nil, nil
	}
	if minSize == 0 {
		minSize = DefaultRingMinSize
	}
	minSize = min(minSize, MaxRingSize)
	g := uint64(0)
	for _, w := range weights {
		g = gcd(g, uint64(max(w, 1)))
	}
	var sum float64
	for _, w := range weights {
		sum += float64(uint64(max(w, 1)) / g)
	}
	q := max(float64(minSize)/8, 1)
	if q*sum > MaxRingSize {
		q = MaxRingSize / sum
	}
	weights = slices.Clone(weights)
	for i, w := range weights {
		weights[i] = uint32(uint64(max(w, 1)) / g)
	}
	type point struct {
		hash  uint64
		owner uint32
	}
	points := make([]point, 0, int(q*sum)+len(eps))
	for i, e := range eps {
		base := HashString(e.Address)
		n := max(uint64(math.Round(float64(weights[i])*q)), 1)
		for k := range n {
			// Each point of an endpoint is a distinct, address-derived
			// value: the ring is the same in every process.
			points = append(points, point{mix64(base + (k+1)*0x9e3779b97f4a7c15), uint32(i)})
		}
	}
	slices.SortFunc(points, func(a, b point) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return int(a.owner) - int(b.owner)
	})
	hashes := make([]uint64, len(points))
	owners := make([]uint32, len(points))
	for i, p := range points {
		hashes[i], owners[i] = p.hash, p.owner
	}
	return hashes, owners
}

// Pick returns the endpoint of a random hash, or nil when there is none.
func (b *RingHash) Pick() *Endpoint { return b.PickHash(rand.Uint64()) }

// PickHash returns the endpoint owning hash, or the next usable one along
// the ring when it is ejected; nil when there is none.
func (b *RingHash) PickHash(hash uint64) *Endpoint {
	r := b.ring.Load()
	if r == nil || len(r.hashes) == 0 {
		return nil
	}
	i, _ := slices.BinarySearch(r.hashes, hash)
	if i == len(r.hashes) {
		i = 0
	}
	t := r.t
	idx := r.owners[i]
	if !t.usable(idx) {
		// Walk on, bounded by the ring; every endpoint's points are spread
		// along it, so a usable one comes soon unless nearly all are out.
		for k := 1; k < len(r.owners); k++ {
			if c := r.owners[(i+k)%len(r.owners)]; !t.out(c) {
				idx = c
				break
			}
		}
	}
	e := t.eps[idx]
	e.inFlight.Add(1)
	return e
}

// Maglev is Google's Maglev consistent hash (NSDI '16) with Envoy's weights:
// a lookup table of MaglevTableSize slots filled by each endpoint's
// permutation of the slots in turn, an endpoint taking its turn in
// proportion to its weight. Lookups are one index; when one endpoint of N
// leaves about 1/N of keys move (a little more than the ring's minimum in
// exchange for an even spread). An ejected endpoint's keys are rehashed
// onto the others. Pick without a hash picks a random slot.
type Maglev struct {
	endpoints
	lookup atomic.Pointer[maglevTable]
}

// maglevTable is the immutable lookup structure: slots holds, for each
// slot, the index into t.eps.
type maglevTable struct {
	t     *table
	slots []uint32
}

// Update replaces the endpoint set, keeping the state of endpoints that stay.
func (b *Maglev) Update(eps []config.Endpoint) { b.update(eps, b.install) }

func (b *Maglev) install(eps []*Endpoint, weights []uint32, h *health) {
	t := &table{eps: eps, weights: weights, health: h}
	b.lookup.Store(&maglevTable{t: t, slots: buildMaglev(eps, weights)})
	b.table.Store(t)
}

// buildMaglev fills the table. Endpoint i's permutation is
// (offset_i + next×skip_i) mod M, with offset and skip from two independent
// hashes of its address; M prime makes every permutation visit every slot.
// Weights follow Envoy: in round r endpoint i takes a slot when
// r×w_i ≥ target_i and then raises target_i by the largest weight, so the
// heaviest endpoint takes a slot every round and one of half its weight
// every other round.
func buildMaglev(eps []*Endpoint, weights []uint32) []uint32 {
	if len(eps) == 0 {
		return nil
	}
	const m = MaglevTableSize
	type builder struct {
		offset, skip, next, target uint64
	}
	bs := make([]builder, len(eps))
	var maxW uint64
	for i, e := range eps {
		h := HashString(e.Address)
		bs[i].offset = mix64(h^0x5bd1e9955bd1e995) % m
		bs[i].skip = mix64(h^0x27d4eb2f165667c5)%(m-1) + 1
		maxW = max(maxW, uint64(weights[i]))
	}
	const empty = math.MaxUint32
	slots := make([]uint32, m)
	for i := range slots {
		slots[i] = empty
	}
	filled := 0
	for round := uint64(1); filled < m; round++ {
		for i := range bs {
			if filled == m {
				break
			}
			b := &bs[i]
			if round*uint64(weights[i]) < b.target {
				continue
			}
			b.target += maxW
			c := (b.offset + b.next*b.skip) % m
			for slots[c] != empty {
				b.next++
				c = (b.offset + b.next*b.skip) % m
			}
			slots[c] = uint32(i)
			b.next++
			filled++
		}
	}
	return slots
}

// Pick returns the endpoint of a random slot, or nil when there is none.
func (b *Maglev) Pick() *Endpoint { return b.PickHash(rand.Uint64()) }

// PickHash returns the endpoint of hash's slot; when that endpoint is
// ejected the hash is remixed and looked up again, which spreads its keys
// over the others by weight and keeps every other key in place.
func (b *Maglev) PickHash(hash uint64) *Endpoint {
	mt := b.lookup.Load()
	if mt == nil || len(mt.slots) == 0 {
		return nil
	}
	t := mt.t
	idx := mt.slots[hash%MaglevTableSize]
	for tries := 0; !t.usable(idx); tries++ {
		if tries == 16 {
			idx = t.healthyIndex()
			break
		}
		hash = mix64(hash + 0x9e3779b97f4a7c15)
		idx = mt.slots[hash%MaglevTableSize]
	}
	e := t.eps[idx]
	e.inFlight.Add(1)
	return e
}
