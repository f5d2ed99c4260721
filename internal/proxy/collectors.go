package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register adds collectors that live outside the data path (the
// authorization recorder's, the identity's) to the proxy's registry, so
// that /stats/prometheus serves them with the proxy's own series in one
// exposition. Call it before Run; it is safe for concurrent use. It fails
// when a collector is already registered or collides with one, naming it,
// and registers none of cs then.
func (p *Proxy) Register(cs ...prometheus.Collector) error {
	for i, c := range cs {
		if err := p.metrics.reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				p.metrics.reg.Unregister(done)
			}
			return fmt.Errorf("register collector %d: %w", i, err)
		}
	}
	return nil
}
