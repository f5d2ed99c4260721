package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"verge.dev/verge/api/v1alpha1"
)

func newGetCommand(e *env) *cobra.Command {
	var (
		namespace string
		all       bool
		output    string
	)
	cmd := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "Show resources: services, workloads, httproutes, grpcroutes, destinationpolicies or all",
		Example: `  verge get services
  verge get svc web -o yaml
  verge get all -A`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "table", "yaml", "json":
			default:
				return usageError("unknown output format %q: want table, yaml or json", output)
			}
			ns := namespace
			if all {
				ns = ""
			}
			var kinds []v1alpha1.Kind
			name := ""
			if args[0] == "all" {
				if len(args) == 2 {
					return usageError("get all takes no NAME")
				}
				kinds = v1alpha1.Kinds
			} else {
				k, n, err := kindArg(args[0])
				if err != nil {
					return err
				}
				if len(args) == 2 {
					if n != "" {
						return usageError("name given twice: %q and %q", args[0], args[1])
					}
					n = args[1]
				}
				kinds, name = []v1alpha1.Kind{k}, n
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			c := e.client()
			if name != "" {
				if all {
					return usageError("a NAME needs a namespace: use -n, not -A")
				}
				obj, err := c.Get(ctx, kinds[0], ns, name)
				if err != nil {
					return err
				}
				if output == "table" {
					return printTable(e.out, kinds[0], []v1alpha1.Object{obj}, false, false, e.now())
				}
				return printObject(e.out, output, obj)
			}
			var lists [][]v1alpha1.Object
			total := 0
			for _, k := range kinds {
				objs, err := c.List(ctx, k, ns)
				if err != nil {
					return err
				}
				lists = append(lists, objs)
				total += len(objs)
			}
			if output != "table" {
				items := []v1alpha1.Object{}
				for _, l := range lists {
					items = append(items, l...)
				}
				return printObject(e.out, output, map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
			}
			if total == 0 {
				if ns == "" {
					fmt.Fprintln(e.errOut, "No resources found.")
				} else {
					fmt.Fprintf(e.errOut, "No resources found in %s namespace.\n", ns)
				}
				return nil
			}
			first := true
			for i, l := range lists {
				if len(l) == 0 {
					continue
				}
				if !first {
					fmt.Fprintln(e.out)
				}
				first = false
				if err := printTable(e.out, kinds[i], l, ns == "", len(kinds) > 1, e.now()); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", v1alpha1.DefaultNamespace, "namespace")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list across all namespaces")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
}

// printObject writes v as YAML or indented JSON.
func printObject(w io.Writer, format string, v any) error {
	var b []byte
	var err error
	if format == "yaml" {
		b, err = yaml.Marshal(v)
	} else {
		b, err = json.MarshalIndent(v, "", "  ")
		b = append(b, '\n')
	}
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = w.Write(b)
	return err
}

// printTable writes objs of kind k as a table with the kind's columns.
// withNS adds a NAMESPACE column; qualified names rows "service/web", as
// `get all` does to tell kinds apart.
func printTable(w io.Writer, k v1alpha1.Kind, objs []v1alpha1.Object, withNS, qualified bool, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	var head []string
	if withNS {
		head = append(head, "NAMESPACE")
	}
	head = append(head, "NAME")
	head = append(head, columns(k)...)
	head = append(head, "AGE")
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, o := range objs {
		var row []string
		if withNS {
			row = append(row, o.GetNamespace())
		}
		name := o.GetName()
		if qualified {
			name = kindLabel(k) + "/" + name
		}
		row = append(row, name)
		row = append(row, cells(o)...)
		row = append(row, age(o, now))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func columns(k v1alpha1.Kind) []string {
	switch k.Kind {
	case "Service":
		return []string{"PORTS", "SELECTOR"}
	case "Workload":
		return []string{"ADDRESS", "PORTS", "SERVICEACCOUNT"}
	case "DestinationPolicy":
		return []string{"TARGET", "POLICY"}
	case "Telemetry":
		return []string{"SCOPE", "ACCESSLOG", "TRACING", "METRICS"}
	default:
		return []string{"PARENTS", "RULES"}
	}
}

func cells(o v1alpha1.Object) []string {
	switch o := o.(type) {
	case *v1alpha1.Service:
		return []string{servicePorts(o), selector(o.Spec.Selector)}
	case *v1alpha1.Workload:
		return []string{o.Spec.Address, workloadPorts(o), orNone(o.Spec.ServiceAccount)}
	case *v1alpha1.HTTPRoute:
		return []string{parents(o.Spec.ParentRefs), strconv.Itoa(len(o.Spec.Rules))}
	case *v1alpha1.GRPCRoute:
		return []string{parents(o.Spec.ParentRefs), strconv.Itoa(len(o.Spec.Rules))}
	case *v1alpha1.DestinationPolicy:
		return []string{policyTarget(o.Spec.TargetRef), lbPolicy(o.Spec.LoadBalancer)}
	case *v1alpha1.Telemetry:
		return telemetryCells(o)
	}
	return nil
}

// telemetryCells renders a Telemetry's scope (mesh, namespace or
// service/NAME), its access log path, its sampling rate and collector, and
// whether metrics are on.
func telemetryCells(t *v1alpha1.Telemetry) []string {
	scope := "namespace"
	switch {
	case t.Spec.Service != "":
		scope = "service/" + t.Spec.Service
	case t.Namespace == v1alpha1.MeshNamespace:
		scope = "mesh"
	}
	log, trace, metrics := "off", "off", "on"
	if t.Spec.AccessLogOn() {
		log = t.Spec.AccessLog.Path
	}
	if tr := t.Spec.Tracing; tr != nil && tr.SamplingPercent != nil {
		trace = strconv.FormatFloat(*tr.SamplingPercent, 'g', -1, 64) + "%->" + tr.Collector
	}
	if !t.Spec.MetricsOn() {
		metrics = "off"
	}
	return []string{scope, log, trace, metrics}
}

// servicePorts renders ports as kubectl does: 80/HTTP, or 80:8080/HTTP when
// the target port differs.
func servicePorts(s *v1alpha1.Service) string {
	var ps []string
	for _, p := range s.Spec.Ports {
		v := strconv.Itoa(int(p.Port))
		if p.TargetPort != 0 && p.TargetPort != p.Port {
			v += ":" + strconv.Itoa(int(p.TargetPort))
		}
		ps = append(ps, v+"/"+string(p.Protocol))
	}
	return orNone(strings.Join(ps, ","))
}

// workloadPorts renders application ports, with the proxy's inbound port in
// parentheses when one fronts it: 8080(15006).
func workloadPorts(wl *v1alpha1.Workload) string {
	var ps []string
	for _, p := range wl.Spec.Ports {
		v := strconv.Itoa(int(p.Port))
		if p.InboundPort != 0 {
			v += "(" + strconv.Itoa(int(p.InboundPort)) + ")"
		}
		ps = append(ps, v)
	}
	return orNone(strings.Join(ps, ","))
}

func selector(sel map[string]string) string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		kv = append(kv, k+"="+sel[k])
	}
	return orNone(strings.Join(kv, ","))
}

func parents(refs []gatewayv1.ParentReference) string {
	var ps []string
	for _, r := range refs {
		v := string(r.Name)
		if r.Port != nil {
			v += ":" + strconv.Itoa(int(*r.Port))
		}
		ps = append(ps, v)
	}
	return orNone(strings.Join(ps, ","))
}

// policyTarget renders a targetRef as kind/name, with :port when it names
// one (service/web:80).
func policyTarget(r v1alpha1.PolicyTargetReference) string {
	v := strings.ToLower(r.Kind) + "/" + r.Name
	if r.Port != 0 {
		v += ":" + strconv.Itoa(int(r.Port))
	}
	return v
}

func lbPolicy(lb *v1alpha1.LoadBalancer) string {
	if lb == nil {
		return "<none>"
	}
	return orNone(string(lb.Policy))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func age(o v1alpha1.Object, now time.Time) string {
	ts := o.GetCreationTimestamp()
	if ts.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(ts.Time))
}
