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

	"verge.dev/verge/internal/atomicfile"
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

// writeCache replaces the cache file atomically (internal/atomicfile).
func writeCache(dir string, data []byte) error {
	if err := atomicfile.Write(filepath.Join(dir, cacheFileName), data, 0o600, 0o700); err != nil {
		return fmt.Errorf("write xds cache: %w", err)
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
