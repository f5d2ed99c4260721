package controlplane

import (
	"context"
	"slices"
	"sync"
	"time"

	"verge.dev/verge/internal/identity"
	"verge.dev/verge/internal/registry"
	"verge.dev/verge/internal/xds"
	"verge.dev/verge/internal/xds/translate"
	"verge.dev/verge/web"
)

// certCacheTTL is how long the dashboard reuses one read of the
// certificate log: it lives in the store, renewals add a record every half
// SVID life per proxy, and every open dashboard polls every 2 s.
const certCacheTTL = 10 * time.Second

// dashboardSource joins the registry's, the xDS server's and the
// certificate log's views for the dashboard.
type dashboardSource struct {
	reg   *registry.Registry
	xds   *xds.Server
	certs *certCache
}

var _ web.Source = dashboardSource{}

func (d dashboardSource) Status() ([]registry.ServiceStatus, []registry.WorkloadStatus) {
	return d.reg.Status()
}

func (d dashboardSource) ProxyStatus() []xds.ProxyStatus { return d.xds.ProxyStatus() }

func (d dashboardSource) Mesh() (translate.Mesh, bool) { return d.reg.Mesh() }

func (d dashboardSource) Certificates(ctx context.Context) ([]web.Certificate, error) {
	if d.certs == nil {
		return nil, nil
	}
	return d.certs.get(ctx)
}

// certCache reads the issuance log at most about once per certCacheTTL
// (dashboards polling at the same moment may each read once); the result
// leaves out expired certificates.
type certCache struct {
	log identity.CertificateLog
	now func() time.Time

	// mu guards the fields below. The store read happens outside it.
	mu     sync.Mutex
	certs  []web.Certificate
	readAt time.Time
}

func newCertCache(log identity.CertificateLog) *certCache {
	return &certCache{log: log, now: time.Now}
}

func (c *certCache) get(ctx context.Context) ([]web.Certificate, error) {
	now := c.now()
	c.mu.Lock()
	fresh := !c.readAt.IsZero() && now.Sub(c.readAt) < certCacheTTL
	cached := c.certs
	c.mu.Unlock()
	if fresh {
		return slices.Clone(cached), nil
	}
	infos, err := c.log.List(ctx)
	if err != nil {
		return nil, err
	}
	certs := make([]web.Certificate, 0, len(infos))
	for _, in := range infos {
		if !now.Before(in.ExpiresAt) {
			continue
		}
		certs = append(certs, web.Certificate{
			Serial: in.Serial, SPIFFEID: in.SPIFFEID,
			IssuedAt: in.IssuedAt, ExpiresAt: in.ExpiresAt, Revoked: in.RevokedAt != nil,
		})
	}
	c.mu.Lock()
	c.certs, c.readAt = certs, now
	c.mu.Unlock()
	return slices.Clone(certs), nil
}
