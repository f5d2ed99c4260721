package apiserver

import (
	"encoding/json"
	"fmt"
	"strconv"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/store"
)

// Key is the store key of one object: /{group}/{plural}/{namespace}/{name}.
// The control plane's registry watches the same keys, so the layout is part
// of this package's contract.
func Key(k v1alpha1.Kind, ns, name string) string {
	return Prefix(k) + ns + "/" + name
}

// Prefix is the store prefix holding every object of kind k, in every
// namespace: /{group}/{plural}/.
func Prefix(k v1alpha1.Kind) string {
	return "/" + k.Group + "/" + k.Plural + "/"
}

// namespacePrefix is the store prefix of the objects of kind k in one namespace.
func namespacePrefix(k v1alpha1.Kind, ns string) string {
	return Prefix(k) + ns + "/"
}

// DecodeStored turns a stored value of kind k into a typed object whose
// metadata.resourceVersion is the value's ModRevision. Decoding is lenient
// (unknown fields are ignored) because the value was validated when it was
// written, possibly by an older version of Verge.
func DecodeStored(k v1alpha1.Kind, kv store.KeyValue) (v1alpha1.Object, error) {
	obj := k.New()
	if err := json.Unmarshal(kv.Value, obj); err != nil {
		return nil, fmt.Errorf("decode stored %s %q: %w", k.Kind, kv.Key, err)
	}
	obj.SetResourceVersion(strconv.FormatInt(kv.ModRevision, 10))
	return obj, nil
}

// encodeStored is the stored form of obj: its JSON without a resourceVersion,
// which the store's revision supplies on every read.
func encodeStored(obj v1alpha1.Object) ([]byte, error) {
	rv := obj.GetResourceVersion()
	obj.SetResourceVersion("")
	defer obj.SetResourceVersion(rv)
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %q: %w", obj.GetName(), err)
	}
	return b, nil
}
