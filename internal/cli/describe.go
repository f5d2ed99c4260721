package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"verge.dev/verge/api/v1alpha1"
)

func newDescribeCommand(e *env) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "describe KIND NAME",
		Short: "Show one resource in detail; for a service, the workloads it selects",
		Args: usageArgs(func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && strings.Contains(args[0], "/") {
				return nil
			}
			return cobra.ExactArgs(2)(cmd, args)
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, name, err := kindArg(args[0])
			if err != nil {
				return err
			}
			if len(args) == 2 {
				if name != "" {
					return usageError("name given twice: %q and %q", args[0], args[1])
				}
				name = args[1]
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			c := e.client()
			obj, err := c.Get(ctx, k, namespace, name)
			if err != nil {
				return err
			}
			var related []v1alpha1.Object
			switch obj.(type) {
			case *v1alpha1.Service, *v1alpha1.Workload:
				// Services select workloads by label: show the other side.
				other, _ := v1alpha1.KindByName("workloads")
				if _, ok := obj.(*v1alpha1.Workload); ok {
					other, _ = v1alpha1.KindByName("services")
				}
				related, err = c.List(ctx, other, obj.GetNamespace())
				if err != nil {
					return err
				}
			}
			return describe(e.out, k, obj, related, e.now())
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", v1alpha1.DefaultNamespace, "namespace")
	return cmd
}

// describe writes obj for a person. related holds the workloads of a
// service's namespace, or the services of a workload's.
func describe(w io.Writer, k v1alpha1.Kind, obj v1alpha1.Object, related []v1alpha1.Object, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	row := func(label, value string) { fmt.Fprintf(tw, "%s:\t%s\n", label, value) }
	row("Name", obj.GetName())
	row("Namespace", obj.GetNamespace())
	row("Kind", k.Kind+" ("+k.APIVersion()+")")
	row("Labels", selector(obj.GetLabels()))
	row("Annotations", selector(obj.GetAnnotations()))
	row("UID", orNone(string(obj.GetUID())))
	created := obj.GetCreationTimestamp()
	row("Created", created.UTC().Format(time.RFC3339)+" ("+age(obj, now)+" ago)")
	row("Generation", strconv.FormatInt(obj.GetGeneration(), 10))
	row("Resource Version", obj.GetResourceVersion())
	if err := tw.Flush(); err != nil {
		return err
	}
	spec, err := specYAML(obj)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "Spec:")
	for line := range strings.Lines(spec) {
		fmt.Fprint(w, "  "+line)
	}
	switch o := obj.(type) {
	case *v1alpha1.Service:
		return describeEndpoints(w, o, related)
	case *v1alpha1.Workload:
		var names []string
		for _, r := range related {
			if s, ok := r.(*v1alpha1.Service); ok && selects(s, o) {
				names = append(names, s.Name)
			}
		}
		fmt.Fprintf(w, "Services: %s\n", orNone(strings.Join(names, ", ")))
	}
	return nil
}

// describeEndpoints lists the workloads a service selects and where each
// service port reaches them.
func describeEndpoints(w io.Writer, s *v1alpha1.Service, workloads []v1alpha1.Object) error {
	var selected []*v1alpha1.Workload
	for _, r := range workloads {
		if wl, ok := r.(*v1alpha1.Workload); ok && selects(s, wl) {
			selected = append(selected, wl)
		}
	}
	if len(selected) == 0 {
		fmt.Fprintln(w, "Workloads: <none>")
		return nil
	}
	fmt.Fprintln(w, "Workloads:")
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tADDRESS\tENDPOINTS")
	for _, wl := range selected {
		var eps []string
		for _, sp := range s.Spec.Ports {
			ep := "<no port " + strconv.Itoa(int(sp.TargetPort)) + ">"
			for _, wp := range wl.Spec.Ports {
				if wp.Port == sp.TargetPort {
					port := wp.Port
					if wp.InboundPort != 0 {
						port = wp.InboundPort
					}
					ep = net.JoinHostPort(wl.Spec.Address, strconv.Itoa(int(port)))
				}
			}
			eps = append(eps, sp.Name+"="+ep)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", wl.Name, wl.Spec.Address, strings.Join(eps, ","))
	}
	return tw.Flush()
}

// selects reports whether s's selector matches wl's labels (and namespace).
// An empty selector selects nothing, as in Kubernetes.
func selects(s *v1alpha1.Service, wl *v1alpha1.Workload) bool {
	if s.Namespace != wl.Namespace || len(s.Spec.Selector) == 0 {
		return false
	}
	for k, v := range s.Spec.Selector {
		if got, ok := wl.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func specYAML(obj v1alpha1.Object) (string, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return "", fmt.Errorf("encode %q: %w", obj.GetName(), err)
	}
	var o struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(j, &o); err != nil {
		return "", fmt.Errorf("decode spec of %q: %w", obj.GetName(), err)
	}
	y, err := yaml.JSONToYAML(o.Spec)
	if err != nil {
		return "", fmt.Errorf("encode spec of %q: %w", obj.GetName(), err)
	}
	return string(y), nil
}
