package bench

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// chartGroups are the chart's categories: a speed relative to direct for
// each (direct = 1, higher is better), read from the scenarios' VsDirect.
var chartGroups = []struct {
	scenario int
	key      string
	label    string
	target   float64 // the floor for kitsune, 0 for none
}{
	{1, "throughput", "1: throughput", 0.70},
	{2, "p50_speed", "2: p50 latency", 0},
	{2, "p99_speed", "2: p99 latency", 0},
	{3, "aggregate", "3: aggregate", 0.80},
	{5, "throughput", "5: WAN throughput", 0.95},
	{6, "aggregate", "6: hot content", 1.5},
}

var chartPaths = []struct {
	name  string
	color color.RGBA
}{
	{pathKitsune, color.RGBA{R: 0xe0, G: 0x6c, B: 0x1f, A: 0xff}},
	{pathKitsuneTCP, color.RGBA{R: 0xf2, G: 0xb0, B: 0x7a, A: 0xff}},
	{pathKuboFront, color.RGBA{R: 0x4a, G: 0x78, B: 0xb8, A: 0xff}},
	{pathFloor, color.RGBA{R: 0x8a, G: 0x8a, B: 0x8a, A: 0xff}},
}

// Chart draws the ratios against direct as grouped bars with min–max
// whiskers, a line at direct's 1.0 and the targets for Kitsune.
func (r *Results) Chart(file string) error {
	p := plot.New()
	where := "loopback"
	for _, sr := range r.Scenarios {
		if sr.ID == 5 {
			where = fmt.Sprintf("loopback; 5: %d Mbit/s, %v RTT", wanRate/1_000_000, wanRTT)
		}
	}
	p.Title.Text = fmt.Sprintf("Kitsune vs alternatives, relative to direct Kubo (%d CPUs, %s)", r.Machine.CPUs, where)
	p.Y.Label.Text = "speed relative to direct (higher is better)"
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false

	labels := make([]string, len(chartGroups))
	for i, g := range chartGroups {
		labels[i] = g.label
	}
	p.NominalX(labels...)

	const width = 0.2
	ymax := 1.2
	for pi, cp := range chartPaths {
		b := &bars{width: width, color: cp.color}
		for gi, g := range chartGroups {
			var s Stat
			for _, sr := range r.Scenarios {
				if sr.ID == g.scenario {
					s = sr.vsDirect(cp.name, g.key)
				}
			}
			if !finite(s.Median) {
				continue
			}
			b.xs = append(b.xs, float64(gi)+(float64(pi)-float64(len(chartPaths)-1)/2)*width)
			b.ys = append(b.ys, s.Median)
			b.lo = append(b.lo, s.Min)
			b.hi = append(b.hi, s.Max)
			ymax = math.Max(ymax, s.Max*1.1)
		}
		p.Add(b)
		p.Legend.Add(cp.name, b)
	}
	direct, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 1}, {X: float64(len(chartGroups)) - 0.5, Y: 1}})
	if err != nil {
		return err
	}
	direct.LineStyle.Width = vg.Points(1)
	direct.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(direct)
	p.Legend.Add("direct = 1", direct)
	for gi, g := range chartGroups {
		if g.target == 0 {
			continue
		}
		x := float64(gi) - float64(len(chartPaths)-1)/2*width // kitsune's bar
		l, err := plotter.NewLine(plotter.XYs{{X: x - width/2, Y: g.target}, {X: x + width/2, Y: g.target}})
		if err != nil {
			return err
		}
		l.LineStyle.Width = vg.Points(2)
		l.LineStyle.Color = color.RGBA{R: 0xc0, A: 0xff}
		p.Add(l)
		if gi == 0 {
			p.Legend.Add("kitsune target", l)
		}
	}
	p.Y.Max = ymax
	p.X.Min, p.X.Max = -0.5, float64(len(chartGroups))-0.5
	return p.Save(10*vg.Inch, 5*vg.Inch, file)
}

// bars are bars placed and sized in data coordinates (BarChart's width
// is in drawing units, which cannot line up whiskers), with min–max
// whiskers and the median written above.
type bars struct {
	xs, ys, lo, hi []float64
	width          float64
	color          color.Color
}

func (b *bars) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	whisker := draw.LineStyle{Color: color.Black, Width: vg.Points(0.8)}
	for i := range b.xs {
		x0, x1 := trX(b.xs[i]-b.width/2*0.92), trX(b.xs[i]+b.width/2*0.92)
		y0, y1 := trY(0), trY(b.ys[i])
		c.FillPolygon(b.color, c.ClipPolygonY([]vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}))
		xm := trX(b.xs[i])
		if b.lo[i] != b.hi[i] {
			lo, hi := trY(b.lo[i]), trY(b.hi[i])
			cap := (x1 - x0) / 4
			c.StrokeLine2(whisker, xm, lo, xm, hi)
			c.StrokeLine2(whisker, xm-cap, lo, xm+cap, lo)
			c.StrokeLine2(whisker, xm-cap, hi, xm+cap, hi)
		}
		sty := draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 8), XAlign: draw.XCenter, Handler: plot.DefaultTextHandler}
		top := trY(math.Max(b.ys[i], b.hi[i]))
		c.FillText(sty, vg.Point{X: xm, Y: top + vg.Points(3)}, fmt.Sprintf("%.2f", b.ys[i]))
	}
}

func (b *bars) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, xmax, ymin, ymax = math.Inf(1), math.Inf(-1), 0, 0
	for i := range b.xs {
		xmin = math.Min(xmin, b.xs[i]-b.width/2)
		xmax = math.Max(xmax, b.xs[i]+b.width/2)
		ymax = math.Max(ymax, math.Max(b.ys[i], b.hi[i]))
	}
	if len(b.xs) == 0 {
		return 0, 0, 0, 0
	}
	return
}

func (b *bars) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{{X: c.Min.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Max.Y}, {X: c.Min.X, Y: c.Max.Y}}
	c.FillPolygon(b.color, c.ClipPolygonY(pts))
}
