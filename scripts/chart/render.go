// Command render renders a Helm chart (apiVersion v2, no dependencies) the way
// `helm template` does, for machines where no helm binary can be had: Go's text/template
// with the sprig function library (Debian's golang-github-masterminds-sprig-dev) and the
// functions Helm adds (include, tpl, required, toYaml, fromYaml, toJson, lookup, ...).
//
//	render [--name NAME] [--namespace NS] [-f VALUES.yaml]... [--set a.b=c]...
//	       [--set-string a.b=c]... [--include-crds] CHART_DIR
//
// Values: the chart's values.yaml, then each -f file, then each --set, merged as Helm
// merges them (maps merged key by key, anything else replaced, a null deletes the key).
// Templates see .Values, .Release (Name, Namespace, Service "Helm", IsInstall true,
// IsUpgrade false, Revision 1), .Chart (Chart.yaml with Helm's capitalised field names),
// .Capabilities (Kubernetes 1.20), .Files (every chart file outside templates/) and
// .Template (Name, BasePath). Every file of templates/ except _*.tpl partials and
// NOTES.txt is rendered; the documents are printed as `---\n# Source: CHART/templates/FILE`
// in Helm's install order (by kind, then by file and position), empty ones skipped, the
// files of crds/ first with --include-crds.
//
// Errors (a template that does not parse, an unknown function, `required` or `fail`, a
// rendered document that is not YAML, a chart whose kubeVersion excludes 1.20) name the
// template and line, and end the program with exit status 1; a usage error with 2.
//
// Build (scripts/chart/render.sh does it once and caches the binary):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render render.go
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

// kubeVersion is the Kubernetes version the chart is rendered for (.Capabilities.KubeVersion).
const kubeVersion = "v1.20.2"

// maxIncludeDepth bounds nested include/tpl calls, so a template that includes itself
// ends with an error instead of exhausting the stack.
const maxIncludeDepth = 1000

// installOrder is the order of kinds in which Helm installs (and prints) manifests; kinds
// not listed come after these, sorted by kind.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

// builtinAPIVersions are the group versions a 1.20 API server serves
// (.Capabilities.APIVersions.Has).
var builtinAPIVersions = []string{
	"v1", "admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1",
	"apiextensions.k8s.io/v1", "apiextensions.k8s.io/v1beta1", "apiregistration.k8s.io/v1",
	"apiregistration.k8s.io/v1beta1", "apps/v1", "authentication.k8s.io/v1",
	"authentication.k8s.io/v1beta1", "authorization.k8s.io/v1", "authorization.k8s.io/v1beta1",
	"autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2", "batch/v1", "batch/v1beta1",
	"certificates.k8s.io/v1", "certificates.k8s.io/v1beta1", "coordination.k8s.io/v1",
	"coordination.k8s.io/v1beta1", "discovery.k8s.io/v1beta1", "events.k8s.io/v1",
	"events.k8s.io/v1beta1", "extensions/v1beta1", "flowcontrol.apiserver.k8s.io/v1beta1",
	"networking.k8s.io/v1", "networking.k8s.io/v1beta1", "node.k8s.io/v1", "node.k8s.io/v1beta1",
	"policy/v1beta1", "rbac.authorization.k8s.io/v1", "rbac.authorization.k8s.io/v1beta1",
	"scheduling.k8s.io/v1", "scheduling.k8s.io/v1beta1", "storage.k8s.io/v1",
	"storage.k8s.io/v1beta1",
}

// Chart is Chart.yaml with the field names templates use (.Chart.Name, .Chart.AppVersion).
type Chart struct {
	APIVersion   string                   `json:"apiVersion"`
	Name         string                   `json:"name"`
	Version      string                   `json:"version"`
	AppVersion   string                   `json:"appVersion"`
	KubeVersion  string                   `json:"kubeVersion"`
	Description  string                   `json:"description"`
	Type         string                   `json:"type"`
	Keywords     []string                 `json:"keywords"`
	Home         string                   `json:"home"`
	Sources      []string                 `json:"sources"`
	Icon         string                   `json:"icon"`
	Deprecated   bool                     `json:"deprecated"`
	Annotations  map[string]string        `json:"annotations"`
	Maintainers  []Maintainer             `json:"maintainers"`
	Dependencies []map[string]interface{} `json:"dependencies"`
}

// Maintainer is one entry of Chart.yaml's maintainers (.Chart.Maintainers).
type Maintainer struct {
	Name  string `json:"name"`
	Email string `json:"email"`
	URL   string `json:"url"`
}

// Release is .Release of a first install.
type Release struct {
	Name      string
	Namespace string
	Service   string
	IsInstall bool
	IsUpgrade bool
	Revision  int
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

// String prints the version as Helm does ("v1.20.2").
func (k KubeVersion) String() string { return k.Version }

// VersionSet is .Capabilities.APIVersions.
type VersionSet []string

// Has tells whether a group version ("apps/v1") or a group version and kind
// ("apps/v1/Deployment": the kind is not checked) is served.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion || strings.HasPrefix(apiVersion, x+"/") {
			return true
		}
	}
	return false
}

// Capabilities is .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// Files is .Files: the chart's files outside templates/, by path relative to the chart.
type Files map[string][]byte

// Get returns a file's content, or "" when there is no such file (as Helm does).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's content as bytes (nil when there is no such file).
func (f Files) GetBytes(name string) []byte { return f[name] }

// Lines returns a file's lines (without their line ends).
func (f Files) Lines(name string) []string {
	s := strings.TrimSuffix(string(f[name]), "\n")
	if s == "" {
		return []string{}
	}
	return strings.Split(s, "\n")
}

// Glob returns the files whose path matches a shell pattern (path.Match).
func (f Files) Glob(pattern string) (Files, error) {
	out := Files{}
	for name, b := range f {
		ok, err := path.Match(pattern, name)
		if err != nil {
			return nil, err
		}
		if ok {
			out[name] = b
		}
	}
	return out, nil
}

// options are the command line's.
type options struct {
	name, namespace string
	valueFiles      []string
	sets            []setArg
	includeCRDs     bool
	chartDir        string
}

// setArg is one --set or --set-string argument.
type setArg struct {
	expr     string
	asString bool
}

const usage = "usage: render [--name NAME] [--namespace NS] [-f VALUES.yaml]... [--set a.b=c]... [--set-string a.b=c]... [--include-crds] CHART_DIR"

func parseArgs(args []string) (options, error) {
	o := options{name: "release-name", namespace: "default"}
	value := func(i *int, flag string) (string, error) {
		a := args[*i]
		if strings.HasPrefix(a, flag+"=") {
			return strings.TrimPrefix(a, flag+"="), nil
		}
		if *i+1 >= len(args) {
			return "", fmt.Errorf("%s needs a value", flag)
		}
		*i++
		return args[*i], nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		flag := a
		if j := strings.Index(a, "="); j > 0 && strings.HasPrefix(a, "-") {
			flag = a[:j]
		}
		var v string
		var err error
		switch flag {
		case "--name":
			v, err = value(&i, flag)
			o.name = v
		case "-n", "--namespace":
			v, err = value(&i, flag)
			o.namespace = v
		case "-f", "--values":
			v, err = value(&i, flag)
			o.valueFiles = append(o.valueFiles, v)
		case "--set":
			v, err = value(&i, flag)
			o.sets = append(o.sets, setArg{expr: v})
		case "--set-string":
			v, err = value(&i, flag)
			o.sets = append(o.sets, setArg{expr: v, asString: true})
		case "--include-crds":
			o.includeCRDs = true
		case "-h", "--help":
			return o, errors.New(usage)
		default:
			if strings.HasPrefix(a, "-") {
				return o, fmt.Errorf("unknown option %s\n%s", a, usage)
			}
			if o.chartDir != "" {
				return o, fmt.Errorf("more than one chart directory (%s, %s)\n%s", o.chartDir, a, usage)
			}
			o.chartDir = a
		}
		if err != nil {
			return o, err
		}
	}
	if o.chartDir == "" {
		return o, errors.New(usage)
	}
	return o, nil
}

// readYAMLMap reads a YAML file into a map with JSON's types (numbers are float64), as
// Helm reads values.
func readYAMLMap(file string) (map[string]interface{}, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// mergeValues merges `over` into `base` (both modified maps): maps key by key, anything
// else replaced by the override, a null override deletes the key.
func mergeValues(base, over map[string]interface{}) map[string]interface{} {
	for k, v := range over {
		if v == nil {
			delete(base, k)
			continue
		}
		om, oIsMap := v.(map[string]interface{})
		bm, bIsMap := base[k].(map[string]interface{})
		if oIsMap && bIsMap {
			base[k] = mergeValues(bm, om)
		} else {
			base[k] = v
		}
	}
	return base
}

// splitUnescaped splits s at sep where sep is not preceded by a backslash, keeping the
// escapes (they are removed by unescape).
func splitUnescaped(s string, sep byte) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if s[i] == sep {
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var indexRe = regexp.MustCompile(`^(.*)\[(\d+)\]$`)

// typedValue is what --set makes of a value: an integer, true, false or null (in any
// case), else a string (--set-string: always a string).
func typedValue(s string, asString bool) interface{} {
	if asString {
		return s
	}
	switch strings.ToLower(s) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	// A number with a leading zero (an octal-looking "0755", a zip code) stays a string.
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && (s == "0" || !strings.HasPrefix(s, "0")) {
		return n
	}
	return s
}

// applySet applies one --set argument (`a.b=c,d[0]=e`, `\.` and `\,` escaped) to values.
func applySet(values map[string]interface{}, arg setArg) error {
	for _, pair := range splitUnescaped(arg.expr, ',') {
		if pair == "" {
			continue
		}
		kv := splitUnescaped(pair, '=')
		if len(kv) < 2 {
			return fmt.Errorf("--set %q: %q is not key=value", arg.expr, pair)
		}
		raw := strings.Join(kv[1:], "=")
		var val interface{}
		if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") && !arg.asString {
			list := []interface{}{}
			for _, item := range splitUnescaped(raw[1:len(raw)-1], ',') {
				list = append(list, typedValue(unescape(item), false))
			}
			val = list
		} else {
			val = typedValue(unescape(raw), arg.asString)
		}
		keys := splitUnescaped(kv[0], '.')
		if err := setPath(values, keys, val); err != nil {
			return fmt.Errorf("--set %q: %v", arg.expr, err)
		}
	}
	return nil
}

// setPath sets values[keys...] = val, making maps (and lists, for `name[i]`) on the way;
// a null val deletes the key.
func setPath(m map[string]interface{}, keys []string, val interface{}) error {
	key := unescape(keys[0])
	idx := -1
	if g := indexRe.FindStringSubmatch(keys[0]); g != nil {
		key = unescape(g[1])
		idx, _ = strconv.Atoi(g[2])
	}
	if key == "" {
		return errors.New("an empty key")
	}
	last := len(keys) == 1
	if idx < 0 {
		if last {
			if val == nil {
				delete(m, key)
			} else {
				m[key] = val
			}
			return nil
		}
		next, ok := m[key].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[key] = next
		}
		return setPath(next, keys[1:], val)
	}
	list, _ := m[key].([]interface{})
	for len(list) <= idx {
		list = append(list, nil)
	}
	if last {
		list[idx] = val
	} else {
		next, ok := list[idx].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			list[idx] = next
		}
		if err := setPath(next, keys[1:], val); err != nil {
			return err
		}
	}
	m[key] = list
	return nil
}

// toYAML marshals v as Helm's toYaml does (through JSON, keys sorted), without the
// trailing newline; "" when v cannot be marshalled.
func toYAML(v interface{}) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

// fromYAML parses YAML into a map; a parse error is returned in the map under "Error".
func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// fromYAMLArray parses a YAML list; a parse error is returned as its only element.
func fromYAMLArray(s string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

// fromJSON parses JSON into a map; a parse error is returned in the map under "Error".
func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// toJSON marshals v as JSON ("" when it cannot be).
func toJSON(v interface{}) string {
	b, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(b)
}

// renderer holds the parsed templates of one chart and renders them.
type renderer struct {
	root  *template.Template
	depth int
}

// funcMap is sprig's functions (without env and expandenv, as in Helm) and Helm's own.
// include and tpl are bound to the renderer once the templates are parsed.
func (r *renderer) funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["fromYamlArray"] = fromYAMLArray
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	// There is no cluster to look objects up in: as with `helm template`, nothing is found.
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	f["include"] = r.include
	f["tpl"] = r.tpl
	return f
}

// include renders the named template with data and returns the text.
func (r *renderer) include(name string, data interface{}) (string, error) {
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > maxIncludeDepth {
		return "", fmt.Errorf("include %q: nested more than %d deep (a template that includes itself?)", name, maxIncludeDepth)
	}
	var buf bytes.Buffer
	if err := r.root.ExecuteTemplate(&buf, name, data); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// tpl renders the string text as a template, with the chart's named templates available.
func (r *renderer) tpl(text string, data interface{}) (string, error) {
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > maxIncludeDepth {
		return "", fmt.Errorf("tpl: nested more than %d deep", maxIncludeDepth)
	}
	t, err := r.root.Clone()
	if err != nil {
		return "", err
	}
	name := "tpl"
	if m, ok := data.(map[string]interface{}); ok {
		if tm, ok := m["Template"].(map[string]interface{}); ok {
			if n, ok := tm["Name"].(string); ok {
				name = n + " (tpl)"
			}
		}
	}
	t, err = t.New(name).Parse(text)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return "", err
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

// doc is one rendered document.
type doc struct {
	source  string // CHART/templates/FILE
	kind    string
	content string
}

// docSeparator splits a rendered file into YAML documents as Helm does.
var docSeparator = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// splitDocs splits a rendered file into its non-empty documents, each checked to be YAML
// and read for its kind.
func splitDocs(source, text string) ([]doc, error) {
	var out []doc
	for _, part := range docSeparator.Split(text, -1) {
		content := strings.TrimSpace(part)
		if content == "" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(content), &head); err != nil {
			return nil, fmt.Errorf("YAML parse error on %s: %v", source, err)
		}
		// A document of comments only is empty too.
		var any interface{}
		_ = yaml.Unmarshal([]byte(content), &any)
		if any == nil {
			continue
		}
		out = append(out, doc{source: source, kind: head.Kind, content: content})
	}
	return out, nil
}

// sortByKind orders documents in Helm's install order, keeping the file order within a kind.
func sortByKind(docs []doc) {
	rank := map[string]int{}
	for i, k := range installOrder {
		rank[k] = i
	}
	sort.SliceStable(docs, func(i, j int) bool {
		ri, iok := rank[docs[i].kind]
		rj, jok := rank[docs[j].kind]
		switch {
		case !iok && !jok:
			return docs[i].kind < docs[j].kind
		case !iok:
			return false
		case !jok:
			return true
		}
		return ri < rj
	})
}

func run(o options) (string, error) {
	chartDir := filepath.Clean(o.chartDir)
	chartFile := filepath.Join(chartDir, "Chart.yaml")
	b, err := os.ReadFile(chartFile)
	if err != nil {
		return "", fmt.Errorf("not a chart: %v", err)
	}
	var chart Chart
	if err := yaml.Unmarshal(b, &chart); err != nil {
		return "", fmt.Errorf("%s: %v", chartFile, err)
	}
	if chart.Name == "" || chart.Version == "" {
		return "", fmt.Errorf("%s: name and version are required", chartFile)
	}
	if len(chart.Dependencies) > 0 {
		return "", fmt.Errorf("%s: chart dependencies are not supported by this renderer", chartFile)
	}
	if chart.KubeVersion != "" {
		c, err := semver.NewConstraint(chart.KubeVersion)
		if err != nil {
			return "", fmt.Errorf("%s: kubeVersion %q: %v", chartFile, chart.KubeVersion, err)
		}
		if !c.Check(semver.MustParse(kubeVersion)) {
			return "", fmt.Errorf("chart requires kubeVersion %s which is incompatible with Kubernetes %s", chart.KubeVersion, kubeVersion)
		}
	}

	values := map[string]interface{}{}
	if _, err := os.Stat(filepath.Join(chartDir, "values.yaml")); err == nil {
		if values, err = readYAMLMap(filepath.Join(chartDir, "values.yaml")); err != nil {
			return "", err
		}
	}
	for _, f := range o.valueFiles {
		over, err := readYAMLMap(f)
		if err != nil {
			return "", err
		}
		values = mergeValues(values, over)
	}
	for _, s := range o.sets {
		if err := applySet(values, s); err != nil {
			return "", err
		}
	}

	// The chart's files: templates (with partials), CRDs, and the rest for .Files.
	type tmplFile struct{ name, text string }
	var templates []tmplFile
	var crds []doc
	files := Files{}
	err = filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "charts" {
				return fmt.Errorf("%s/charts: subcharts are not supported by this renderer", chartDir)
			}
			return nil
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(rel, "templates/"):
			templates = append(templates, tmplFile{name: chart.Name + "/" + rel, text: string(content)})
		case rel == "Chart.yaml" || rel == "values.yaml" || rel == "values.schema.json" || rel == ".helmignore":
		default:
			if strings.HasPrefix(rel, "crds/") && (strings.HasSuffix(rel, ".yaml") || strings.HasSuffix(rel, ".yml") || strings.HasSuffix(rel, ".json")) {
				crds = append(crds, doc{source: chart.Name + "/" + rel, kind: "CustomResourceDefinition", content: strings.TrimRight(string(content), "\n")})
			}
			files[rel] = content
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Slice(templates, func(i, j int) bool { return templates[i].name < templates[j].name })

	r := &renderer{}
	r.root = template.New("chart").Option("missingkey=zero").Funcs(r.funcMap())
	for _, t := range templates {
		if _, err := r.root.New(t.name).Parse(t.text); err != nil {
			return "", err
		}
	}
	caps := Capabilities{
		KubeVersion: KubeVersion{Version: kubeVersion, Major: "1", Minor: "20", GitVersion: kubeVersion},
		APIVersions: VersionSet(builtinAPIVersions),
	}
	release := Release{Name: o.name, Namespace: o.namespace, Service: "Helm", IsInstall: true, Revision: 1}
	var docs []doc
	for _, t := range templates {
		base := path.Base(t.name)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Release":      release,
			"Chart":        chart,
			"Capabilities": caps,
			"Files":        files,
			"Template":     map[string]interface{}{"Name": t.name, "BasePath": chart.Name + "/templates"},
		}
		var buf bytes.Buffer
		if err := r.root.ExecuteTemplate(&buf, t.name, top); err != nil {
			return "", err
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		ds, err := splitDocs(t.name, out)
		if err != nil {
			return "", err
		}
		docs = append(docs, ds...)
	}
	sortByKind(docs)
	if o.includeCRDs {
		docs = append(crds, docs...)
	}
	var out strings.Builder
	for _, d := range docs {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", d.source, d.content)
	}
	return out.String(), nil
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	fmt.Print(out)
}
