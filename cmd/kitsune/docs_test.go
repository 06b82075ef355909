package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// TestConfigurationDocUpToDate fails when docs/configuration.md and the
// flags differ: a flag added, removed, renamed or re-described without
// regenerating the reference.
func TestConfigurationDocUpToDate(t *testing.T) {
	want := renderedConfigDoc(t)
	path := filepath.Join("..", "..", configDocPath)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s: %v; generate it with: %s", configDocPath, err, regenerateHint)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s does not match the flags (first difference: %s); regenerate it with:\n\t%s",
			configDocPath, firstDiff(got, want), regenerateHint)
	}
}

// TestConfigurationDocCoversEveryFlag checks the renderer itself: every
// visible flag of every command appears with its environment variable
// and default, and hidden commands stay out.
func TestConfigurationDocCoversEveryFlag(t *testing.T) {
	doc := string(renderedConfigDoc(t))
	var c cli
	parser, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, cmd := range commandLeaves(parser.Model.Node) {
		if !strings.Contains(doc, "## `kitsune "+cmd.Path()+"`") {
			t.Errorf("no section for kitsune %s", cmd.Path())
		}
		for _, f := range cmd.Flags {
			if f.Hidden || f.Name == "help" {
				continue
			}
			n++
			row := rowOf(doc, cmd.Path(), "`--"+f.Name+"`")
			if f.IsBool() && f.Tag.Negatable != "" {
				row = rowOf(doc, cmd.Path(), "`--[no-]"+f.Name+"`")
			}
			if row == "" {
				t.Errorf("kitsune %s: no row for --%s", cmd.Path(), f.Name)
				continue
			}
			for _, e := range f.Envs {
				if !strings.Contains(row, "`"+e+"`") {
					t.Errorf("--%s: row lacks its environment variable %s: %s", f.Name, e, row)
				}
			}
			if f.Default != "" && !strings.Contains(row, "`"+f.Default+"`") {
				t.Errorf("--%s: row lacks its default %q: %s", f.Name, f.Default, row)
			}
		}
	}
	if n < 40 {
		t.Errorf("only %d flags documented; the model walk is missing some", n)
	}
	for _, hidden := range []string{"kitsune docs"} {
		if strings.Contains(doc, "## `"+hidden) {
			t.Errorf("hidden command %q is documented", hidden)
		}
	}
	// The flags of run are grouped under the titles help shows.
	for _, g := range flagGroups() {
		if !strings.Contains(doc, "### "+g.Title+"\n") {
			t.Errorf("no section %q", g.Title)
		}
	}
}

// rowOf finds the table row that starts with the flag's name in the
// section of command path.
func rowOf(doc, path, name string) string {
	start := strings.Index(doc, "## `kitsune "+path+"`")
	if start < 0 {
		return ""
	}
	sec := doc[start+1:]
	if end := strings.Index(sec, "\n## "); end >= 0 {
		sec = sec[:end]
	}
	for _, line := range strings.Split(sec, "\n") {
		if strings.HasPrefix(line, "| ") && strings.Contains(strings.SplitN(line, " | ", 2)[0], name) {
			return line
		}
	}
	return ""
}

func renderedConfigDoc(t *testing.T) []byte {
	t.Helper()
	var c cli
	parser, err := newParser(&c, kong.Exit(func(int) { t.Fatal("kong exited") }))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := renderConfigDoc(&buf, parser.Model); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// firstDiff names the first line where the file and the flags part.
func firstDiff(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d: file has %.120q, flags give %.120q", i+1, gl, wl)
		}
	}
	return "none"
}
