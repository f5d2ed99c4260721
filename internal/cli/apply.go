package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/apiclient"
)

// source is one file's worth of decoded objects.
type source struct {
	name string // file path, or "stdin"
	objs []v1alpha1.Object
}

// docError is a failure of one object of a file.
type docError struct {
	file string
	doc  int // 1-based index of the object in the file
	err  error
}

func (e *docError) Error() string { return fmt.Sprintf("%s: document %d: %v", e.file, e.doc, e.err) }
func (e *docError) Unwrap() error { return e.err }

// readSources reads every -f argument: a file, a folder (its *.yaml, *.yml
// and *.json files in name order, not recursive) or "-" for in. It decodes
// everything before anything is sent, so a syntax error anywhere applies
// nothing.
func readSources(paths []string, in io.Reader) ([]source, error) {
	if len(paths) == 0 {
		return nil, usageError("no files given: use -f PATH (a file, a folder or - for stdin)")
	}
	var files []string
	for _, p := range paths {
		if p == "-" {
			files = append(files, p)
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read %w", err)
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read %w", err)
		}
		for _, en := range entries { // ReadDir sorts by name
			switch strings.ToLower(filepath.Ext(en.Name())) {
			case ".yaml", ".yml", ".json":
				if !en.IsDir() {
					files = append(files, filepath.Join(p, en.Name()))
				}
			}
		}
	}
	var out []source
	var errs []error
	for _, f := range files {
		var data []byte
		var err error
		name := f
		if f == "-" {
			name = "stdin"
			data, err = io.ReadAll(in)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", name, err))
			continue
		}
		objs, err := v1alpha1.Decode(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		out = append(out, source{name: name, objs: objs})
	}
	return out, errors.Join(errs...)
}

func newApplyCommand(e *env) *cobra.Command {
	var (
		files     []string
		namespace string
		dry       bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f PATH",
		Short: "Create or replace resources from files, folders or stdin",
		Example: `  verge apply -f services.yaml
  verge apply -f deploy/ -f extra.yaml
  cat route.yaml | verge apply -f -`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			srcs, err := readSources(files, e.in)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			c := e.client()
			var opts []apiclient.Option
			suffix := ""
			if dry {
				opts, suffix = append(opts, apiclient.DryRun()), " (server dry run)"
			}
			var errs []error
			for _, src := range srcs {
				for i, obj := range src.objs {
					if obj.GetNamespace() == "" {
						obj.SetNamespace(namespace)
					}
					action, err := applyOne(ctx, c, obj, opts)
					if err != nil {
						errs = append(errs, &docError{file: src.name, doc: i + 1, err: err})
						continue
					}
					k, _ := v1alpha1.KindOf(obj)
					fmt.Fprintf(e.out, "%s/%s %s%s\n", kindLabel(k), obj.GetName(), action, suffix)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, folder or - (stdin) to apply; repeatable")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", v1alpha1.DefaultNamespace, "namespace for objects that name none")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "have the server validate and report without storing")
	return cmd
}

// applyOne applies obj and says what happened: created, configured or
// unchanged (the server keeps an unchanged object, resourceVersion and all).
func applyOne(ctx context.Context, c *apiclient.Client, obj v1alpha1.Object, opts []apiclient.Option) (string, error) {
	k, _ := v1alpha1.KindOf(obj)
	before, err := c.Get(ctx, k, obj.GetNamespace(), obj.GetName())
	switch {
	case apiclient.IsNotFound(err):
		before = nil
	case err != nil:
		return "", err
	}
	after, err := c.Apply(ctx, obj, opts...)
	if err != nil {
		return "", err
	}
	if before == nil {
		return "created", nil
	}
	same, err := sameObject(before, after)
	if err != nil {
		return "", err
	}
	if same {
		return "unchanged", nil
	}
	return "configured", nil
}

// sameObject compares two objects ignoring resourceVersion (a dry run
// reports the stored one even when the object would change).
func sameObject(a, b v1alpha1.Object) (bool, error) {
	enc := func(o v1alpha1.Object) (string, error) {
		rv := o.GetResourceVersion()
		o.SetResourceVersion("")
		defer o.SetResourceVersion(rv)
		j, err := json.Marshal(o)
		return string(j), err
	}
	ja, err := enc(a)
	if err != nil {
		return false, fmt.Errorf("encode %q: %w", a.GetName(), err)
	}
	jb, err := enc(b)
	if err != nil {
		return false, fmt.Errorf("encode %q: %w", b.GetName(), err)
	}
	return ja == jb, nil
}

func newDeleteCommand(e *env) *cobra.Command {
	var (
		files     []string
		namespace string
	)
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME | -f PATH)",
		Short: "Delete resources by kind and name or as named in files",
		Args: usageArgs(func(cmd *cobra.Command, args []string) error {
			if len(files) > 0 {
				return cobra.NoArgs(cmd, args)
			}
			if len(args) == 1 && strings.Contains(args[0], "/") {
				return nil
			}
			return cobra.ExactArgs(2)(cmd, args)
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			c := e.client()
			del := func(k v1alpha1.Kind, ns, name string) error {
				if err := c.Delete(ctx, k, ns, name); err != nil {
					return err
				}
				fmt.Fprintf(e.out, "%s %q deleted\n", kindLabel(k), name)
				return nil
			}
			if len(files) == 0 {
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
				return del(k, namespace, name)
			}
			srcs, err := readSources(files, e.in)
			if err != nil {
				return err
			}
			var errs []error
			for _, src := range srcs {
				for i, obj := range src.objs {
					k, _ := v1alpha1.KindOf(obj)
					ns := obj.GetNamespace()
					if ns == "" {
						ns = namespace
					}
					if err := del(k, ns, obj.GetName()); err != nil {
						errs = append(errs, &docError{file: src.name, doc: i + 1, err: err})
					}
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file, folder or - (stdin) naming the objects to delete; repeatable")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", v1alpha1.DefaultNamespace, "namespace")
	return cmd
}
