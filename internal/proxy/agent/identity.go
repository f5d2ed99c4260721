package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"verge.dev/verge/internal/proxy/config"
	"verge.dev/verge/internal/proxy/svid"
)

// newIdentity returns the proxy's identity source when the proxy has a join
// token or a persisted SVID, nil (no identity) when it has neither.
func newIdentity(cfg Config, logger *slog.Logger) (*svid.Source, error) {
	if cfg.JoinToken == "" && !svid.HasPersisted(cfg.DataDir) {
		return nil, nil
	}
	src, err := svid.New(svid.Config{
		Server:    cfg.Server,
		JoinToken: cfg.JoinToken,
		CAFile:    cfg.CAFile,
		Dir:       cfg.DataDir,
		Logger:    logger,
	})
	if errors.Is(err, svid.ErrNoCredential) {
		// A persisted SVID that expired, and no token to get another.
		logger.Warn("persisted svid unusable and no join token", "error", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("proxy identity: %w", err)
	}
	return src, nil
}

// workloadServiceAccount is the service account the workload registers
// with. Without --service-account it is the SVID's (spiffe://TD/ns/NS/sa/SA):
// the token decided it. With one that disagrees, the flag is kept and the
// disagreement logged: the control plane lets an SVID register only a
// workload of its own namespace and service account, so the registration is
// refused, which is what a proxy handed another service's token must get.
func workloadServiceAccount(cfg Config, id spiffeid.ID, log *slog.Logger) string {
	var ns, sa string
	if rest, ok := strings.CutPrefix(id.Path(), "/ns/"); ok {
		ns, sa, _ = strings.Cut(rest, "/sa/")
	}
	if sa == "" {
		log.Error("svid is not a workload identity", "spiffe_id", id.String())
		return cfg.ServiceAccount
	}
	if ns != cfg.Namespace {
		log.Error("svid namespace differs from --namespace; the control plane will refuse the workload",
			"spiffe_id", id.String(), "namespace", cfg.Namespace)
	}
	if cfg.ServiceAccount == "" {
		return sa
	}
	if sa != cfg.ServiceAccount {
		log.Error("svid service account differs from --service-account; the control plane will refuse the workload",
			"spiffe_id", id.String(), "service_account", cfg.ServiceAccount)
	}
	return cfg.ServiceAccount
}

// feedTrustBundle hands the SDS trust bundle of snap to id before the data
// path sees snap.
func feedTrustBundle(id *svid.Source, snap *config.Snapshot, log *slog.Logger) {
	if id == nil || snap == nil {
		return
	}
	sec, ok := snap.Secrets[config.SecretTrustBundle]
	if !ok || sec == nil {
		return
	}
	if err := id.SetTrustBundle(sec.TrustDomain, sec.Roots); err != nil {
		log.Warn("trust bundle not applied", "secret", sec.Name, "error", err)
	}
}
