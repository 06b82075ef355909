// Package geoip tells which country upstream peers connect from: a
// MaxMind-format country database (GeoLite2 Country, DB-IP Lite Country)
// that follows its file, and per-country counts of peers, connections and
// bytes sent, kept bounded by the set of country codes.
package geoip

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
	"go.uber.org/zap"
)

// Unknown is the country of an address the database has no country for,
// or of a connection with no IP address of its own (relayed).
const Unknown = "unknown"

// Info describes the database in use.
type Info struct {
	Path         string    `json:"path"`
	DatabaseType string    `json:"database_type"`
	BuildTime    time.Time `json:"build_time"`
	LoadedAt     time.Time `json:"loaded_at"`
	// LastError is why the newest version of the file was refused, if it
	// was; the previous database stays in use.
	LastError string `json:"last_error,omitempty"`
}

// DB is a country database that is re-read when its file changes. A
// replacement that cannot be read keeps the previous one in use.
type DB struct {
	path string

	cur atomic.Pointer[loaded]

	mu      sync.Mutex // serialises reloads
	stamp   fileStamp
	lastErr string
}

type loaded struct {
	r    *maxminddb.Reader
	info Info
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// Open reads the database at path. A missing, unreadable or corrupt file,
// or one without country data, is an error naming the file.
func Open(path string) (*DB, error) {
	d := &DB{path: path}
	if err := d.reload(); err != nil {
		return nil, err
	}
	return d, nil
}

// load reads the whole file into memory rather than mapping it: an
// operator's updater may truncate and rewrite the file in place, which
// would pull a mapping out from under a lookup.
func load(path string) (*maxminddb.Reader, fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("GeoIP database: %w", err)
	}
	if fi.IsDir() {
		return nil, fileStamp{}, fmt.Errorf("GeoIP database %s is a directory", path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("GeoIP database: %w", err)
	}
	r, err := maxminddb.OpenBytes(raw)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("GeoIP database %s is not a MaxMind (mmdb) database: %w", path, err)
	}
	if r.Metadata.NodeCount == 0 {
		return nil, fileStamp{}, fmt.Errorf("GeoIP database %s is empty", path)
	}
	return r, fileStamp{size: fi.Size(), mod: fi.ModTime()}, nil
}

func (d *DB) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, st, err := load(d.path)
	if err != nil {
		d.lastErr = err.Error()
		return err
	}
	d.stamp, d.lastErr = st, ""
	d.cur.Store(&loaded{r: r, info: Info{
		Path:         d.path,
		DatabaseType: r.Metadata.DatabaseType,
		BuildTime:    r.Metadata.BuildTime().UTC(),
		LoadedAt:     time.Now().UTC(),
	}})
	return nil
}

// Check re-reads the file if its size or modification time changed since
// it was last read (or last refused). A file that cannot be read leaves
// the database in use as it was; the error is returned and kept in Info.
// It reports whether a new database was loaded.
func (d *DB) Check() (bool, error) {
	fi, err := os.Stat(d.path)
	d.mu.Lock()
	if err != nil {
		d.lastErr = fmt.Sprintf("GeoIP database: %v", err)
		d.mu.Unlock()
		return false, fmt.Errorf("GeoIP database: %w", err)
	}
	same := fileStamp{size: fi.Size(), mod: fi.ModTime()} == d.stamp
	d.mu.Unlock()
	if same {
		return false, nil
	}
	if err := d.reload(); err != nil {
		// Remember the refused version, so it is not re-read (and the error
		// logged) on every check until the file changes again.
		d.mu.Lock()
		d.stamp = fileStamp{size: fi.Size(), mod: fi.ModTime()}
		d.mu.Unlock()
		return false, err
	}
	return true, nil
}

// Watch calls Check every interval until done is closed, logging what
// happens: a bad replacement is an error in the log, not a stop.
func (d *DB) Watch(done <-chan struct{}, interval time.Duration, log *zap.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			switch ok, err := d.Check(); {
			case err != nil:
				log.Error("GeoIP database not reloaded; the previous one stays in use", zap.Error(err))
			case ok:
				i := d.Info()
				log.Info("GeoIP database reloaded", zap.String("path", i.Path), zap.String("type", i.DatabaseType), zap.Time("built", i.BuildTime))
			}
		}
	}
}

// Info describes the database in use.
func (d *DB) Info() Info {
	i := d.cur.Load().info
	d.mu.Lock()
	i.LastError = d.lastErr
	d.mu.Unlock()
	return i
}

// countryRecord is the part of a GeoLite2/GeoIP2/DB-IP country record
// read: the country of the address, or where it is registered.
type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
}

// Country is the ISO 3166-1 alpha-2 code of ip's country, or Unknown.
// Codes are checked to be two letters A-Z, so whatever the file holds,
// at most 26×26 codes (and Unknown) can come out: metric labels stay
// bounded.
func (d *DB) Country(ip netip.Addr) string {
	if !ip.IsValid() {
		return Unknown
	}
	var rec countryRecord
	res := d.cur.Load().r.Lookup(ip.Unmap())
	if !res.Found() {
		return Unknown
	}
	if err := res.Decode(&rec); err != nil {
		return Unknown
	}
	for _, c := range []string{rec.Country.ISOCode, rec.RegisteredCountry.ISOCode} {
		if isCode(c) {
			return c
		}
	}
	return Unknown
}

func isCode(c string) bool {
	return len(c) == 2 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z'
}
