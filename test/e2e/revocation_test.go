package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// certList is the JSON of `verge cert list -o json`.
type certList struct {
	Items []struct {
		Serial    string     `json:"serial"`
		SPIFFEID  string     `json:"spiffeID"`
		TokenID   string     `json:"tokenID"`
		RevokedAt *time.Time `json:"revokedAt"`
		Reason    string     `json:"reason"`
	} `json:"items"`
}

func listCerts(t *testing.T, c *cp, spiffeID string) certList {
	t.Helper()
	out, code := c.verge(t, "", "cert", "list", "--spiffe-id", spiffeID, "-o", "json")
	if code != 0 {
		t.Fatalf("verge cert list: exit %d\n%s", code, out)
	}
	var l certList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("verge cert list -o json: %v\n%s", err, out)
	}
	return l
}

// TestCertificateRevocation: a certificate revoked with `verge cert revoke`
// is refused by the destination's proxy and cannot be renewed; revoking a
// join token revokes the certificates of the proxy that joined with it, so
// its requests are refused; revocations survive a control-plane restart.
func TestCertificateRevocation(t *testing.T) {
	t.Parallel()
	f := newZTFixture(t, nil, "web")
	web := f.callers["web"]
	hc := &http.Client{Timeout: 10 * time.Second}
	waitAPI(t, hc, web.httpURL+"/")
	inbound := f.apiH.addr(15006)
	stats := f.api.admin + "/stats/prometheus"

	// A certificate obtained with a token of its own is accepted...
	intruder := issueSVID(t, f.cp, "intruder")
	if err := mtlsDial(inbound, intruder.cert); err != nil {
		t.Fatalf("valid SVID refused before revocation: %v", err)
	}
	serial := intruder.leaf.SerialNumber.Text(16)
	const intruderID = "spiffe://verge.local/ns/default/sa/intruder"
	l := listCerts(t, f.cp, intruderID)
	if len(l.Items) != 1 || l.Items[0].Serial != serial || l.Items[0].RevokedAt != nil {
		t.Fatalf("cert list for %s = %+v, want one live certificate %s", intruderID, l.Items, serial)
	}
	// ... until it is revoked.
	if out, code := f.cp.verge(t, "", "cert", "revoke", serial, "--reason", "key leaked"); code != 0 {
		t.Fatalf("verge cert revoke: exit %d\n%s", code, out)
	}
	eventually(t, 30*time.Second, func() error {
		if err := mtlsDial(inbound, intruder.cert); err == nil {
			return fmt.Errorf("revoked certificate still accepted by the api proxy")
		}
		return nil
	})
	waitMetric(t, stats, "verge_proxy_downstream_tls_refused_total", map[string]string{"reason": "revoked"}, 1)
	if l := listCerts(t, f.cp, intruderID); len(l.Items) != 1 || l.Items[0].RevokedAt == nil || l.Items[0].Reason != "key leaked" {
		t.Errorf("cert list after revoke = %+v, want it revoked with the reason", l.Items)
	}
	// Renewal with the revoked certificate is refused by the control plane,
	// where a live one gets through to the CSR check.
	if err := renewWith(t, f.cp, issueSVID(t, f.cp, "control").cert); err == nil {
		t.Error("renewWith saw a live certificate refused: the check below would prove nothing")
	}
	if err := renewWith(t, f.cp, intruder.cert); err != nil {
		t.Errorf("revoked certificate: %v", err)
	}
	// Other identities are unaffected.
	if code, body, err := get(hc, web.httpURL+"/"); err != nil || code != 200 {
		t.Fatalf("web -> api after revoking another certificate: %d %q %v", code, body, err)
	}

	// Revoking web's join token revokes the certificate its proxy holds.
	const webID = "spiffe://verge.local/ns/default/sa/web"
	wl := listCerts(t, f.cp, webID)
	if len(wl.Items) == 0 || wl.Items[0].TokenID == "" {
		t.Fatalf("cert list for %s = %+v, want certificates with their token", webID, wl.Items)
	}
	out, code := f.cp.verge(t, "", "token", "revoke", wl.Items[0].TokenID)
	if code != 0 || !strings.Contains(out, "certificate") {
		t.Fatalf("verge token revoke: exit %d\n%s", code, out)
	}
	eventually(t, 30*time.Second, func() error {
		code, _, err := get(hc, web.httpURL+"/")
		if err == nil && code == 200 {
			return fmt.Errorf("web still reaches api with a revoked certificate")
		}
		return nil
	})

	// A restart keeps the revocations: the control plane's own listener
	// still refuses the revoked certificate.
	f.cp.stop(10 * time.Second)
	again := startCPAt(t, f.cp.dataDir, f.cp.api, f.cp.xds)
	if l := listCerts(t, again, intruderID); len(l.Items) != 1 || l.Items[0].RevokedAt == nil {
		t.Errorf("cert list after restart = %+v, want the revoked certificate", l.Items)
	}
	if err := renewWith(t, again, intruder.cert); err != nil {
		t.Errorf("revoked certificate after a restart: %v", err)
	}
}

// renewWith asks the control plane for a renewal over TLS presenting cert
// (no token), as a proxy renews, and returns an error if the control plane
// accepted the certificate. The server certificate is not under test.
func renewWith(t *testing.T, c *cp, cert tls.Certificate) error {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // what is tested is the client certificate
		MinVersion:         tls.VersionTLS13,
	}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := "https://" + strings.TrimPrefix(c.api, "http://") + "/api/v1/certificates"
	resp, err := hc.Post(url, "application/json", strings.NewReader(`{"csr":""}`))
	if err != nil {
		return nil // refused at the TLS layer counts as refused
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return fmt.Errorf("renewal granted: %s", resp.Status)
	}
	// An empty CSR is refused as bad input by a server that accepted the
	// certificate; only a refusal of the certificate counts.
	if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnprocessableEntity {
		return fmt.Errorf("certificate accepted (the empty CSR was refused instead): %s", resp.Status)
	}
	return nil
}

// TestCLIClientCertificate: an administrator gets an admin SVID with a join
// token (`verge cert request`) and then drives the CLI with it alone, no
// admin token; a workload's SVID is not an administrator.
func TestCLIClientCertificate(t *testing.T) {
	t.Parallel()
	c := startCP(t, "")
	dir := t.TempDir()
	out, code := c.verge(t, "", "token", "create", "--service", "admin", "--namespace", "verge-system")
	tok := tokenRE.FindString(out)
	if code != 0 || tok == "" {
		t.Fatalf("token create for verge-system/admin: exit %d\n%s", code, out)
	}
	prefix := filepath.Join(dir, "admin")
	if out, code := vergeRaw(t, "--server", c.api, "cert", "request", "--token", tok, "--out", prefix); code != 0 {
		t.Fatalf("verge cert request: exit %d\n%s", code, out)
	}
	https := "https://" + strings.TrimPrefix(c.api, "http://")
	asAdmin := []string{"--server", https, "--ca-file", prefix + "-bundle.pem", "--cert", prefix + ".crt", "--key", prefix + ".key"}
	svc := "apiVersion: verge.dev/v1alpha1\nkind: Service\nmetadata: {name: certsvc}\nspec:\n  ports: [{port: 80}]\n"
	if out, code := vergeRawIn(t, svc, append(asAdmin, "apply", "-f", "-")...); code != 0 {
		t.Fatalf("verge apply with the admin certificate: exit %d\n%s", code, out)
	}
	if out, code := vergeRaw(t, append(asAdmin, "get", "service", "certsvc")...); code != 0 {
		t.Fatalf("verge get with the admin certificate: exit %d\n%s", code, out)
	}

	// A workload's certificate cannot write.
	out, code = c.verge(t, "", "token", "create", "--service", "web")
	if tok = tokenRE.FindString(out); code != 0 || tok == "" {
		t.Fatalf("token create for web: exit %d\n%s", code, out)
	}
	wprefix := filepath.Join(dir, "web")
	if out, code := vergeRaw(t, "--server", c.api, "cert", "request", "--token", tok, "--out", wprefix); code != 0 {
		t.Fatalf("verge cert request (web): exit %d\n%s", code, out)
	}
	asWeb := []string{"--server", https, "--ca-file", wprefix + "-bundle.pem", "--cert", wprefix + ".crt", "--key", wprefix + ".key"}
	if out, code := vergeRawIn(t, strings.Replace(svc, "certsvc", "websvc", 1), append(asWeb, "apply", "-f", "-")...); code == 0 {
		t.Fatalf("verge apply with a workload certificate succeeded:\n%s", out)
	}
}

// vergeRaw runs the CLI with exactly args (no --token added).
func vergeRaw(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return vergeRawIn(t, "", args...)
}

func vergeRawIn(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, vergeBin, args...)
	cmd.Env = append(cmd.Environ(), "VERGE_TOKEN=", "VERGE_TOKEN_FILE=")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("verge %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return buf.String(), code
}
