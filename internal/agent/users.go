package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// User is an account from the guest's /etc/passwd, with the supplementary
// groups /etc/group gives it.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups, without GID
	Home   string
	Shell  string
}

// maxAccountFile caps how much of /etc/passwd or /etc/group is read: the files
// are the guest's own, but a process running as root can make them anything.
const maxAccountFile = 4 << 20

// errUnknownUser is returned by lookups of a name that /etc/passwd lacks.
var errUnknownUser = errors.New("unknown user")

// userDB reads accounts from <etc>/passwd and <etc>/group, re-reading a file
// when its modification time or size changes. It is safe for concurrent use.
type userDB struct {
	etc string

	mu     sync.Mutex // guards the fields below
	passwd accountFile
	group  accountFile
	users  map[string]*User // by name
	byUID  map[uint32]string
	byGID  map[uint32]string

	namesChecked time.Time // when Names last looked at the files
}

type accountFile struct {
	mtime time.Time
	size  int64
	read  bool
}

func newUserDB(etc string) *userDB { return &userDB{etc: etc} }

// Lookup returns the named user.
func (db *userDB) Lookup(name string) (*User, error) {
	if name == "" || len(name) > 256 {
		return nil, fmt.Errorf("user %q: %w", name, errUnknownUser)
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if err := db.refreshLocked(); err != nil {
		return nil, err
	}
	u, ok := db.users[name]
	if !ok {
		return nil, fmt.Errorf("user %q: %w", name, errUnknownUser)
	}
	return u, nil
}

// Names returns the user and group names for uid and gid, falling back to the
// numbers.
func (db *userDB) Names(uid, gid uint32) (string, string) {
	db.mu.Lock()
	defer db.mu.Unlock()
	// Listing a large directory asks for names once per entry: look at the
	// files at most once a second here. A failed read keeps the old tables.
	if now := time.Now(); db.users == nil || now.Sub(db.namesChecked) > time.Second {
		db.namesChecked = now
		_ = db.refreshLocked()
	}
	u, ok := db.byUID[uid]
	if !ok {
		u = strconv.FormatUint(uint64(uid), 10)
	}
	g, ok := db.byGID[gid]
	if !ok {
		g = strconv.FormatUint(uint64(gid), 10)
	}
	return u, g
}

func (db *userDB) refreshLocked() error {
	pchanged, err := changed(filepath.Join(db.etc, "passwd"), &db.passwd)
	if err != nil {
		return err
	}
	gchanged, err := changed(filepath.Join(db.etc, "group"), &db.group)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if !pchanged && !gchanged && db.users != nil {
		return nil
	}
	pdata, err := readCapped(filepath.Join(db.etc, "passwd"))
	if err != nil {
		return err
	}
	gdata, err := readCapped(filepath.Join(db.etc, "group"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	users, byUID := parsePasswd(pdata)
	groups := parseGroup(gdata)
	byGID := make(map[uint32]string, len(groups))
	for _, g := range groups {
		if _, dup := byGID[g.gid]; !dup {
			byGID[g.gid] = g.name
		}
	}
	for _, u := range users {
		for _, g := range groups {
			if g.gid == u.GID {
				continue
			}
			for _, m := range g.members {
				if m == u.Name {
					u.Groups = append(u.Groups, g.gid)
					break
				}
			}
		}
	}
	db.users, db.byUID, db.byGID = users, byUID, byGID
	return nil
}

// changed stats path and reports whether it differs from what was last read.
func changed(path string, f *accountFile) (bool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("read accounts: %w", err)
	}
	c := !f.read || !fi.ModTime().Equal(f.mtime) || fi.Size() != f.size
	f.read, f.mtime, f.size = true, fi.ModTime(), fi.Size()
	return c, nil
}

func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(io.LimitReader(f, maxAccountFile+1)); err != nil {
		return nil, fmt.Errorf("read accounts %s: %w", path, err)
	}
	if b.Len() > maxAccountFile {
		return nil, fmt.Errorf("read accounts %s: larger than %d bytes", path, maxAccountFile)
	}
	return b.Bytes(), nil
}

// parsePasswd parses passwd(5) lines "name:pw:uid:gid:gecos:home:shell".
// Malformed lines are skipped; the first entry for a name or uid wins.
func parsePasswd(data []byte) (map[string]*User, map[uint32]string) {
	users := map[string]*User{}
	byUID := map[uint32]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxAccountFile)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 7 || f[0] == "" {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		if _, dup := users[f[0]]; dup {
			continue
		}
		users[f[0]] = &User{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]}
		if _, dup := byUID[uint32(uid)]; !dup {
			byUID[uint32(uid)] = f[0]
		}
	}
	return users, byUID
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// parseGroup parses group(5) lines "name:pw:gid:member,member".
func parseGroup(data []byte) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxAccountFile)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 4 || f[0] == "" {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		g := groupEntry{name: f[0], gid: uint32(gid)}
		if f[3] != "" {
			g.members = strings.Split(f[3], ",")
		}
		out = append(out, g)
	}
	return out
}
