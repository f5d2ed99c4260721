package translate

import (
	"testing"

	"verge.dev/verge/api/v1alpha1"
)

// TestServiceAccountsPinMembership: a workload carrying a service's labels
// but running as another identity is left out once the service names its
// service accounts, so copying labels cannot hijack the service.
func TestServiceAccountsPinMembership(t *testing.T) {
	m := loadMesh(t, "testdata/demo")
	frontend := find(t, m.Workloads, "frontend-1")
	var backend *v1alpha1.Service
	for _, s := range m.Services {
		if s.Name == "backend" {
			backend = s
		}
	}
	if backend == nil {
		t.Fatal("no backend service in testdata/demo")
	}
	members := func(m Mesh) map[string]bool {
		out := map[string]bool{}
		for _, si := range NewIndex(m).byNS["default"] {
			if si.svc.Name != "backend" {
				continue
			}
			for _, w := range si.workloads {
				out[w.Name] = true
			}
		}
		return out
	}
	before := members(m)
	if len(before) < 2 {
		t.Fatalf("backend selects %v, want at least two workloads", before)
	}

	pinned := m
	c := *backend
	svc := &c
	svc.Spec.ServiceAccounts = []string{"backend"}
	pinned.Services = replaceService(m.Services, svc)
	tc := *find(t, m.Workloads, "backend-v1-1")
	thief := &tc
	thief.Spec.ServiceAccount = "frontend"
	pinned.Workloads = replaceWorkload(m.Workloads, thief)
	for _, w := range pinned.Workloads {
		if w.Name != thief.Name && before[w.Name] && w.Spec.ServiceAccount != "backend" {
			wc := *w
			w2 := &wc
			w2.Spec.ServiceAccount = "backend"
			pinned.Workloads = replaceWorkload(pinned.Workloads, w2)
		}
	}
	after := members(pinned)
	if after[thief.Name] {
		t.Errorf("backend still selects %s running as %q with serviceAccounts [backend]", thief.Name, thief.Spec.ServiceAccount)
	}
	if len(after) != len(before)-1 {
		t.Errorf("backend selects %v, want %v without %s", after, before, thief.Name)
	}
	tc2 := tc
	// servicesSelecting (the view of a workload not yet indexed) agrees.
	for _, si := range NewIndex(pinned).servicesSelecting(&tc2) {
		if si.svc.Name == "backend" {
			t.Errorf("servicesSelecting(%s) includes backend", thief.Name)
		}
	}
	snapshot(t, NewIndex(pinned).ForWorkload(frontend), false)
}

func replaceService(in []*v1alpha1.Service, s *v1alpha1.Service) []*v1alpha1.Service {
	out := make([]*v1alpha1.Service, 0, len(in))
	for _, x := range in {
		if x.Name == s.Name && x.Namespace == s.Namespace {
			x = s
		}
		out = append(out, x)
	}
	return out
}

func replaceWorkload(in []*v1alpha1.Workload, w *v1alpha1.Workload) []*v1alpha1.Workload {
	out := make([]*v1alpha1.Workload, 0, len(in))
	for _, x := range in {
		if x.Name == w.Name && x.Namespace == w.Namespace {
			x = w
		}
		out = append(out, x)
	}
	return out
}
