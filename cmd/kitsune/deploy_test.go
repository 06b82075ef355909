package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"go.yaml.in/yaml/v3"
)

// The deployment assets in deploy/ are checked against the tools that read
// them and against the flags they pass, so they cannot drift from the
// binary.

const deployDir = "../../deploy"

// runFlags returns the run command's long flag names and environment
// variables, from the same kong model the binary parses with.
func runFlags(t *testing.T) (names, envs map[string]bool) {
	t.Helper()
	var c cli
	p, err := newParser(&c, kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	names, envs = map[string]bool{}, map[string]bool{}
	for _, n := range p.Model.Children {
		if n.Name != "run" {
			continue
		}
		for _, f := range n.Flags {
			names[f.Name] = true
			for _, e := range f.Envs {
				envs[e] = true
			}
		}
	}
	if !names["drain-timeout"] || !envs["KITSUNE_DOWNSTREAM"] {
		t.Fatalf("run flags not found in the kong model: %v", names)
	}
	return names, envs
}

// checkArgs fails on any --flag in args the binary does not know.
func checkArgs(t *testing.T, where string, args []string, names map[string]bool) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !names[name] {
			t.Errorf("%s: unknown flag --%s", where, name)
		}
		if !hasVal && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			val = args[i+1]
			i++
		}
		vals[name] = val
	}
	return vals
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed to check deploy/ (.ci/run installs it): %v", name, err)
	}
	return p
}

func TestDeploySystemdUnit(t *testing.T) {
	names, _ := runFlags(t)
	unit, err := os.ReadFile(filepath.Join(deployDir, "systemd/kitsune.service"))
	if err != nil {
		t.Fatal(err)
	}
	// ExecStart's flags, continuation lines joined.
	text := strings.ReplaceAll(string(unit), "\\\n", " ")
	m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("no ExecStart")
	}
	args := strings.Fields(m[1])
	vals := checkArgs(t, "kitsune.service ExecStart", args[1:], names)
	if vals["key"] != "${STATE_DIRECTORY}/kitsune.key" {
		t.Errorf("the key is not kept in the state directory: --key %q", vals["key"])
	}
	for _, want := range []string{"DynamicUser=yes", "StateDirectory=kitsune", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}
	drain, err := time.ParseDuration(vals["drain-timeout"])
	if err != nil {
		t.Fatal(err)
	}
	ts := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(text)
	if ts == nil {
		t.Fatal("no TimeoutStopSec")
	}
	if stop, err := time.ParseDuration(ts[1]); err != nil || stop <= drain {
		t.Errorf("TimeoutStopSec=%s must exceed --drain-timeout %v (%v)", ts[1], drain, err)
	}

	// systemd-analyze checks directives and that ExecStart is executable:
	// point it at a real file.
	sa := needTool(t, "systemd-analyze")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "kitsune.service")
	if err := os.WriteFile(copyPath, bytes.ReplaceAll(unit, []byte("/usr/local/bin/kitsune"), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", copyPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestDeployHAProxyConfig(t *testing.T) {
	haproxy := needTool(t, "haproxy")
	cfg := filepath.Join(deployDir, "haproxy/haproxy.cfg")
	out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	text, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	for _, want := range []string{"mode tcp", "stick on src", "option httpchk GET /readyz", "check port 5080"} {
		if !strings.Contains(s, want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
	if strings.Contains(s, "shutdown-sessions") {
		t.Error("a replica marked down would lose its connections mid-drain")
	}
}

// k8sDoc is the part of a manifest the cross-checks read.
type k8sDoc struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		ClusterIP       string         `yaml:"clusterIP"`
		SessionAffinity string         `yaml:"sessionAffinity"`
		Selector        map[string]any `yaml:"selector"`
		Ports           []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
			Protocol   string `yaml:"protocol"`
		} `yaml:"ports"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
				Containers                    []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	LivenessProbe  probe `yaml:"livenessProbe"`
	ReadinessProbe probe `yaml:"readinessProbe"`
}

func TestDeployKubernetesManifests(t *testing.T) {
	names, _ := runFlags(t)
	f, err := os.Open(filepath.Join(deployDir, "kubernetes/kitsune.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(false)
	var deploy *k8sDoc
	services := map[string]*k8sDoc{}
	for {
		var d k8sDoc
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		switch d.Kind {
		case "Deployment":
			deploy = &d
		case "Service":
			services[d.Metadata.Name] = &d
		default:
			t.Fatalf("unexpected kind %q", d.Kind)
		}
	}
	if deploy == nil || len(deploy.Spec.Template.Spec.Containers) != 1 || services["kitsune"] == nil || services["kubo-rpc"] == nil {
		t.Fatalf("want a Deployment with one container and Services kitsune and kubo-rpc; got %v, %v", deploy != nil, services)
	}
	c := deploy.Spec.Template.Spec.Containers[0]
	vals := checkArgs(t, "Deployment args", c.Args, names)

	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	portOf := func(addr string) int {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%q: %v", addr, err)
		}
		n, _ := strconv.Atoi(p)
		return n
	}
	if got := portOf(vals["admin"]); ports["admin"] != got {
		t.Errorf("admin containerPort %d, but --admin listens on %d", ports["admin"], got)
	}
	if strings.HasPrefix(vals["admin"], "127.") {
		t.Error("--admin on loopback: the kubelet's probes cannot reach it")
	}
	for what, pr := range map[string]probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
		if pr.HTTPGet.Path != what || pr.HTTPGet.Port != "admin" {
			t.Errorf("probe %+v, want %s on the admin port", pr.HTTPGet, what)
		}
	}
	listenPort := func(flag, proto string) int {
		for _, a := range strings.Split(vals[flag], ",") {
			if m := regexp.MustCompile(`/` + proto + `/(\d+)`).FindStringSubmatch(a); m != nil {
				n, _ := strconv.Atoi(m[1])
				return n
			}
		}
		t.Fatalf("--%s %q has no %s port", flag, vals[flag], proto)
		return 0
	}
	for name, want := range map[string]int{"libp2p-tcp": listenPort("listen", "tcp"), "libp2p-quic": listenPort("listen", "udp"), "libp2p-ws": listenPort("ws", "tcp")} {
		if ports[name] != want {
			t.Errorf("containerPort %s = %d, the flags listen on %d", name, ports[name], want)
		}
	}
	drain, err := time.ParseDuration(vals["drain-timeout"])
	if err != nil {
		t.Fatal(err)
	}
	if grace := time.Duration(deploy.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second; grace <= drain {
		t.Errorf("terminationGracePeriodSeconds %v must exceed --drain-timeout %v", grace, drain)
	}

	front := services["kitsune"]
	if app, _ := front.Spec.Selector["app"].(string); app == "" || app != deploy.Spec.Template.Metadata.Labels["app"] {
		t.Errorf("front Service selects %v, pods are labelled %v", front.Spec.Selector, deploy.Spec.Template.Metadata.Labels)
	}
	if front.Spec.SessionAffinity != "ClientIP" {
		t.Errorf("front Service sessionAffinity %q, want ClientIP", front.Spec.SessionAffinity)
	}
	for _, p := range front.Spec.Ports {
		if name, _ := p.TargetPort.(string); ports[name] == 0 {
			t.Errorf("front Service port %s targets %v, not a container port name", p.Name, p.TargetPort)
		}
	}
	kubo := services["kubo-rpc"]
	if kubo.Spec.ClusterIP != "None" {
		t.Errorf("kubo-rpc is not headless: clusterIP %q", kubo.Spec.ClusterIP)
	}
	host, port, err := net.SplitHostPort(vals["downstream-dns"])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(host, "kubo-rpc.") || len(kubo.Spec.Ports) != 1 || strconv.Itoa(kubo.Spec.Ports[0].Port) != port {
		t.Errorf("--downstream-dns %s does not name the headless Service kubo-rpc and its port %+v", vals["downstream-dns"], kubo.Spec.Ports)
	}
}

// The container build file sets only variables the binary reads and
// exposes the ports they listen on. (Building it needs base images from a
// registry this machine cannot reach.)
func TestDeployDockerfile(t *testing.T) {
	_, envs := runFlags(t)
	text, err := os.ReadFile(filepath.Join(deployDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	set := regexp.MustCompile(`(KITSUNE_[A-Z_]+)=`).FindAllStringSubmatch(s, -1)
	if len(set) < 4 {
		t.Fatalf("only %d KITSUNE_ variables set", len(set))
	}
	for _, m := range set {
		if !envs[m[1]] {
			t.Errorf("Dockerfile sets %s, which no flag reads", m[1])
		}
	}
	for _, want := range []string{"AS build", "COPY --from=build", "./cmd/kitsune", "USER nonroot", "EXPOSE 4001/tcp 4001/udp 4002/tcp 5080/tcp", "KITSUNE_ADMIN=0.0.0.0:5080"} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
