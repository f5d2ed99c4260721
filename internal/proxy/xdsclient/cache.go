package xdsclient

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"verge.dev/verge/internal/proxy/config"
)

// cacheFileName holds the last published configuration: one
// length-delimited DiscoveryResponse per received type, in request order
// (SDS, CDS, EDS, LDS, RDS), each with its accepted version_info and the
// resources the published Snapshot was built from, as received.
const cacheFileName = "xds-cache.pb"

// encodeCache serializes the published resources deterministically, so the
// bytes also tell whether anything changed.
func encodeCache(raw map[string][]*resource, versions map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	opts := protodelim.MarshalOptions{MarshalOptions: proto.MarshalOptions{Deterministic: true}}
	for _, t := range requestOrder {
		version, ok := versions[t]
		if !ok {
			continue
		}
		resp := &discoveryv3.DiscoveryResponse{VersionInfo: version, TypeUrl: t}
		for _, r := range raw[t] {
			resp.Resources = append(resp.Resources, &anypb.Any{TypeUrl: t, Value: r.raw})
		}
		if _, err := opts.MarshalTo(&buf, resp); err != nil {
			return nil, fmt.Errorf("encode %s: %w", t, err)
		}
	}
	return buf.Bytes(), nil
}

// writeCache replaces the cache file atomically: temp file, fsync, rename,
// fsync of the directory, so a crash leaves the old or the new file whole.
func writeCache(dir string, data []byte) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write xds cache %q: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+cacheFileName+"-*")
	if err != nil {
		return fmt.Errorf("write xds cache %q: %w", dir, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write xds cache %q: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync xds cache %q: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close xds cache %q: %w", f.Name(), err)
	}
	path := filepath.Join(dir, cacheFileName)
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename xds cache %q: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync xds cache dir %q: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync xds cache dir %q: %w", dir, err)
	}
	return nil
}

// cacheDigest is the SHA-256 of an encoded cache. Comparing digests rather
// than keeping the last encoding spares holding a second copy of the
// configuration.
type cacheDigest = [sha256.Size]byte

// cacheFileDigest returns the digest of the cache file, or the zero digest
// (which no encoding has in practice) if it cannot be read.
func cacheFileDigest(dir string) cacheDigest {
	data, err := os.ReadFile(filepath.Join(dir, cacheFileName))
	if err != nil {
		return cacheDigest{}
	}
	return sha256.Sum256(data)
}

// LoadCache rebuilds the last Snapshot the client published into dir, so a
// proxy can serve while the control plane is unreachable. Every resource is
// validated again (the proxy may have been upgraded since). A missing cache
// is an error wrapping fs.ErrNotExist.
func LoadCache(dir string) (*config.Snapshot, error) {
	path := filepath.Join(dir, cacheFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load xds cache %q: %w", path, err)
	}
	raw := map[string][]*resource{}
	versions := map[string]string{}
	r := bytes.NewReader(data)
	opts := protodelim.UnmarshalOptions{MaxSize: -1}
	for {
		resp := &discoveryv3.DiscoveryResponse{}
		err := opts.UnmarshalFrom(r, resp)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("load xds cache %q: %w", path, err)
		}
		t := resp.GetTypeUrl()
		if _, known := versions[t]; known || !isKnownType(t) {
			return nil, fmt.Errorf("load xds cache %q: unexpected %q record", path, t)
		}
		decoded, err := decodeResources(t, resp.GetResources(), nil)
		if err != nil {
			return nil, fmt.Errorf("load xds cache %q: %w", path, err)
		}
		versions[t] = resp.GetVersionInfo()
		raw[t] = sortedResources(decoded)
	}
	snap, err := buildFrom(raw)
	if err != nil {
		return nil, fmt.Errorf("load xds cache %q: %w", path, err)
	}
	snap.Versions = versions
	return snap, nil
}

func isKnownType(t string) bool {
	switch t {
	case TypeListener, TypeRoute, TypeCluster, TypeEndpoint, TypeSecret:
		return true
	}
	return false
}
