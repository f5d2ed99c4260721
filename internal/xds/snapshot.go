package xds

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"verge.dev/verge/internal/xds/translate"
)

// typeOrder lists the types the server offers, in the order ADS clients
// should apply them (secrets before the clusters and listeners whose TLS
// contexts use them, clusters before their endpoints, listeners before
// their routes).
var typeOrder = []struct {
	url string
	typ types.ResponseType
}{
	{resource.SecretType, types.Secret},
	{resource.ClusterType, types.Cluster},
	{resource.EndpointType, types.Endpoint},
	{resource.ListenerType, types.Listener},
	{resource.RouteType, types.Route},
}

// buildSnapshot turns one client's resources into a snapshot whose per-type
// version is a hash of that type's resources. Two clients (or two meshes) with
// the same resources of a type get the same version, so the snapshot cache
// pushes a type only to the clients whose resources of that type changed.
// It does not validate: the caller has run r.Validate() first.
func buildSnapshot(r translate.Resources) (*cache.Snapshot, error) {
	byType := map[types.ResponseType][]types.Resource{}
	for _, l := range r.Listeners {
		byType[types.Listener] = append(byType[types.Listener], l)
	}
	for _, rc := range r.Routes {
		byType[types.Route] = append(byType[types.Route], rc)
	}
	for _, c := range r.Clusters {
		byType[types.Cluster] = append(byType[types.Cluster], c)
	}
	for _, e := range r.Endpoints {
		byType[types.Endpoint] = append(byType[types.Endpoint], e)
	}
	for _, sec := range r.Secrets {
		byType[types.Secret] = append(byType[types.Secret], sec)
	}

	snap := &cache.Snapshot{}
	for _, t := range typeOrder {
		items := byType[t.typ]
		version, err := hashResources(items)
		if err != nil {
			return nil, fmt.Errorf("hash %s: %w", t.url, err)
		}
		snap.Resources[t.typ] = cache.NewResources(version, items)
	}
	// Build the delta version map now: the snapshot is shared between
	// clients afterwards and must not be written to again.
	if err := snap.ConstructVersionMap(); err != nil {
		return nil, fmt.Errorf("build version map: %w", err)
	}
	return snap, nil
}

// hashResources is the version of one type's resources: a hash of each
// resource's name and deterministic encoding, in the given (sorted) order.
func hashResources(items []types.Resource) (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var n [8]byte
	for _, res := range items {
		b, err := opts.Marshal(res)
		if err != nil {
			return "", fmt.Errorf("marshal %q: %w", cache.GetResourceName(res), err)
		}
		name := cache.GetResourceName(res)
		binary.BigEndian.PutUint64(n[:], uint64(len(name)))
		h.Write(n[:])
		h.Write([]byte(name))
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}
