package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/alecthomas/kong"
)

// configDocPath is where `make docs` writes the flag reference, relative to
// the repository root; a test compares it with the flags.
const configDocPath = "docs/configuration.md"

// regenerateHint is what the staleness test tells whoever changed a flag.
const regenerateHint = "make docs   (or: go run ./cmd/kitsune docs config -o docs/configuration.md)"

// flagGroups titles the `group` tags of the flags, in the order help and
// the reference show them. Flags with a group missing here still appear,
// titled by their key, after these.
func flagGroups() []kong.Group {
	return []kong.Group{
		{Key: "fleet", Title: "Fleet and load balancing", Description: "Which Kubo nodes are behind Kitsune, how they are checked, and how a node is chosen for a want."},
		{Key: "front", Title: "Front door", Description: "What upstream peers (Kubo, Helia, browsers) connect to: identity, listen and announce addresses, transports, private networks, connection limits, the circuit relay service."},
		{Key: "relay", Title: "Bitswap relay", Description: "Limits of the message-level relay."},
		{Key: "preload", Title: "Preload API", Description: "The js-ipfs preload endpoint (POST /api/v0/refs)."},
		{Key: "http", Title: "HTTP front", Description: "Delegated routing (/routing/v1) so HTTP-routing clients such as Helia find Kitsune as the provider of the fleet's content."},
		{Key: "admin", Title: "Admin server and logs", Description: "Metrics, probes, status API, dashboard, profiler and logging."},
	}
}

// docsCmd writes reference documents generated from the CLI model, so they
// cannot drift from the flags. Hidden: it is for `make docs`, not users.
type docsCmd struct {
	Config docsConfigCmd `cmd:"" help:"Write the flag reference (docs/configuration.md) generated from the flags."`
}

type docsConfigCmd struct {
	Out string `short:"o" type:"path" placeholder:"FILE" help:"File to write; standard output when empty."`
}

// Run renders the model kong parsed this command line with, which is the
// same one every other command uses.
func (c *docsConfigCmd) Run(kctx *kong.Context) error {
	var buf bytes.Buffer
	if err := renderConfigDoc(&buf, kctx.Model); err != nil {
		return err
	}
	if c.Out == "" {
		_, err := os.Stdout.Write(buf.Bytes())
		return err
	}
	if err := os.WriteFile(c.Out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", c.Out, err)
	}
	return nil
}

// renderConfigDoc writes the Markdown reference of every visible command,
// argument and flag of app: name, short form, environment variable,
// default, allowed values and help, grouped by command and flag group.
func renderConfigDoc(w io.Writer, app *kong.Application) error {
	var b strings.Builder
	b.WriteString("<!-- Generated from the flags in cmd/kitsune by `make docs`; do not edit by hand. -->\n\n")
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("Every flag of every `kitsune` command, generated from the command line\n")
	b.WriteString("definition itself (`make docs`), so it cannot drift: a test fails when\n")
	b.WriteString("this file and the flags differ. Every flag can also be set through the\n")
	b.WriteString("environment variable shown; a flag given on the command line wins.\n")
	b.WriteString("Durations take Go's syntax (`500ms`, `30s`, `5m`, `1h`).\n\n")
	b.WriteString("Running the proxy is the default command: `kitsune -d ADDR ...` is\n")
	b.WriteString("`kitsune run -d ADDR ...`.\n")

	for _, cmd := range commandLeaves(app.Node) {
		fmt.Fprintf(&b, "\n## `kitsune %s`\n\n", cmd.Path())
		if cmd.Help != "" {
			b.WriteString(oneLine(cmd.Help) + "\n")
		}
		if len(cmd.Positional) > 0 {
			b.WriteString("\n| argument | description |\n|---|---|\n")
			for _, p := range cmd.Positional {
				name := "`" + strings.ToUpper(p.Name) + "`"
				if p.Flag == nil && !p.Required {
					name += " (optional)"
				}
				fmt.Fprintf(&b, "| %s | %s |\n", name, cell(p.Help))
			}
		}
		for _, g := range groupFlags(cmd) {
			if g.title != "" {
				fmt.Fprintf(&b, "\n### %s\n\n", g.title)
				if g.description != "" {
					b.WriteString(g.description + "\n")
				}
			}
			b.WriteString("\n| flag | environment | default | description |\n|---|---|---|---|\n")
			for _, f := range g.flags {
				fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", flagName(f), flagEnv(f), flagDefault(f), flagHelp(f))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// commandLeaves lists the runnable commands under n in definition order,
// hidden ones left out.
func commandLeaves(n *kong.Node) []*kong.Node {
	var out []*kong.Node
	for _, c := range n.Children {
		if c.Hidden || c.Type != kong.CommandNode {
			continue
		}
		if c.Leaf() {
			out = append(out, c)
			continue
		}
		out = append(out, commandLeaves(c)...)
	}
	return out
}

type flagGroup struct {
	title, description string
	flags              []*kong.Flag
}

// groupFlags returns cmd's own visible flags (not --help), ungrouped ones
// first, then the groups in flagGroups' order, then unknown groups in the
// order they first appear.
func groupFlags(cmd *kong.Node) []flagGroup {
	byKey := map[string]*flagGroup{}
	var order []string
	for _, f := range cmd.Flags {
		if f.Hidden || f.Name == "help" {
			continue
		}
		key := ""
		if f.Group != nil {
			key = f.Group.Key
		}
		g, ok := byKey[key]
		if !ok {
			g = &flagGroup{title: key}
			if f.Group != nil && f.Group.Title != "" {
				g.title, g.description = f.Group.Title, f.Group.Description
			}
			byKey[key] = g
			order = append(order, key)
		}
		g.flags = append(g.flags, f)
	}
	known := flagGroups()
	rank := func(key string) int {
		if key == "" {
			return -1
		}
		for i, g := range known {
			if g.Key == key {
				return i
			}
		}
		return len(known)
	}
	var out []flagGroup
	for r := -1; r <= len(known); r++ {
		for _, key := range order {
			if rank(key) == r {
				out = append(out, *byKey[key])
			}
		}
	}
	return out
}

func flagName(f *kong.Flag) string {
	var parts []string
	if f.Short != 0 {
		parts = append(parts, fmt.Sprintf("`-%c`", f.Short))
	}
	long := "`--" + f.Name + "`"
	if f.IsBool() && f.Tag.Negatable != "" {
		long = "`--[no-]" + f.Name + "`"
	}
	parts = append(parts, long)
	for _, a := range f.Aliases {
		parts = append(parts, "`--"+a+"`")
	}
	name := strings.Join(parts, ", ")
	if !f.IsBool() && !f.IsCounter() {
		name += " " + cell(placeholder(f))
	}
	return name
}

// placeholder names a flag's value without repeating its default, which
// has a column of its own (kong's help puts the default there).
func placeholder(f *kong.Flag) string {
	tail := ""
	if f.IsSlice() && f.Tag.Sep != -1 {
		tail = string(f.Tag.Sep) + "..."
	}
	if f.PlaceHolder != "" {
		return f.PlaceHolder + tail
	}
	if f.Tag.Type == "path" {
		return "FILE" + tail
	}
	t := f.Target.Type()
	if f.IsSlice() {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "DURATION" + tail
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "N" + tail
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "X" + tail
	}
	return "VALUE" + tail
}

func flagEnv(f *kong.Flag) string {
	var envs []string
	for _, e := range f.Envs {
		envs = append(envs, "`"+e+"`")
	}
	return strings.Join(envs, ", ")
}

func flagDefault(f *kong.Flag) string {
	switch {
	case f.Default != "":
		return "`" + cell(f.Default) + "`"
	case f.IsBool():
		return "`false`"
	case f.Required:
		return "(required)"
	}
	return ""
}

func flagHelp(f *kong.Flag) string {
	h := cell(f.Help)
	if f.Enum != "" {
		var vals []string
		for _, v := range strings.Split(f.Enum, ",") {
			vals = append(vals, "`"+strings.TrimSpace(v)+"`")
		}
		h += " One of " + strings.Join(vals, ", ") + "."
	}
	return h
}

// cell makes s safe inside a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(oneLine(s), "|", `\|`)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
