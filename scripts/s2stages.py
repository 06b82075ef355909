#!/usr/bin/env python3
"""Per-block stages of scenario 2 (docs/performance.md, "Small-block
latency"), from a loopback capture: where each block's time goes through
Kitsune and through the floor, from the packets alone.

Capture while kitsune-bench runs scenario 2 (as root):
  tcpdump -i lo -s 96 -B 32768 -w lo.pcap tcp &
  while true; do ss -tnpH; sleep 0.2; done > ss.log &
  KITSUNE_KUBO_BIN=... kitsune-bench -kitsune BUILD -scenarios 2 -runs12 2 -blocks 3000 -out DIR
  (stop both), then
  tcpdump -tt -n -r lo.pcap tcp > lo.txt; sort -u ss.log > ss.u
  python3 scripts/s2stages.py lo.txt ss.u
ss maps each connection to its process; the bench's processes are found
by name (the Kubo nodes' "ipfs*", the others named like "lat-*": rename
the binaries so, or edit NAMES below).

usage: s2stages.py PCAP_TEXT SS_LOG
For each process that relays (talks to a Kubo node and to exactly one other
non-ipfs process), per block:
  fwd  = client's want in -> want out to the node
  node = want out -> node's first reply packet
  blk  = node's first reply packet -> node's block packet (>1000 B)
  back = node's block packet -> block out to the client
For the client talking to the node directly: node = want out -> first reply packet.
"""
import re, sys, collections, statistics, bisect

NAMES = ('lat-',)  # the bench's and the proxies' process names start so
pk = re.compile(r'^(\d+\.\d+) IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): .* length (\d+)')
owner = {}
sp = re.compile(r'users:\(\("([^"]+)",pid=(\d+)')
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) < 6: continue
    m = sp.search(line)
    if not m: continue
    ip, port = f[3].rsplit(':', 1)
    owner[(ip.strip('[]'), int(port))] = (m.group(1), int(m.group(2)))
P = []
for line in open(sys.argv[1]):
    m = pk.match(line)
    if not m: continue
    t, sip, sport, dip, dport, ln = m.groups()
    ln = int(ln)
    if ln == 0: continue
    a = owner.get((sip, int(sport))); b = owner.get((dip, int(dport)))
    if not a or not b: continue
    P.append((float(t), a, b, ln, (sip, int(sport)), (dip, int(dport))))
peers = collections.defaultdict(set)
for x in P:
    peers[x[1]].add(x[2])
def q(v):
    if len(v) < 4: return 'n=%d' % len(v)
    qs = statistics.quantiles(v, n=100)
    return 'n=%4d p50 %4.0f us (p25 %4.0f, p75 %4.0f, p90 %5.0f)' % (len(v), qs[49]*1e6, qs[24]*1e6, qs[74]*1e6, qs[89]*1e6)
def nodeflow(px):
    # the node connection: the (local port, node port) with the most big packets in
    c = collections.Counter((x[5], x[4]) for x in P if x[2] == px and x[1][0].startswith('ipfs') and x[3] > 1000)
    return c.most_common(1)[0][0] if c else None
for px, s in sorted(peers.items()):
    if px[0].startswith('ipfs') or not px[0].startswith(NAMES): continue
    others = {p for p in s if not p[0].startswith('ipfs')}
    nf = nodeflow(px)
    if nf is None: continue
    loc, rem = nf
    nout = [x[0] for x in P if x[1] == px and x[4] == loc and x[5] == rem]
    nin = [x for x in P if x[2] == px and x[5] == loc and x[4] == rem]
    tnin = [x[0] for x in nin]
    st = collections.defaultdict(list)
    if len(others) == 1:
        cl = next(iter(others))
        cin = [x[0] for x in P if x[2] == px and x[1] == cl]
        cout = [x for x in P if x[1] == px and x[2] == cl]
        tcout = [x[0] for x in cout]
        kind = 'proxy %s (client %s)' % (px, cl)
    elif len(others) == 0 or True:
        cin = cout = tcout = None
        kind = 'client %s talking to the node directly' % (px,)
    for b in nin:
        if b[3] <= 1000: continue
        t3b = b[0]
        i = bisect.bisect_left(nout, t3b) - 1
        if i < 0: continue
        t2 = nout[i]
        j = bisect.bisect_right(tnin, t2)
        t3 = tnin[j]
        st['node'].append(t3 - t2); st['blk'].append(t3b - t3)
        if cin is None: continue
        k = bisect.bisect_left(cin, t2) - 1
        if k < 0: continue
        t1 = cin[k]
        l = bisect.bisect_right(tcout, t3b)
        big = [x for x in cout[l:l+8] if x[3] > 1000]
        if not big: continue
        t4 = big[0][0]
        if t4 - t1 > 0.05: continue
        st['fwd'].append(t2 - t1); st['back'].append(t4 - t3b); st['total'].append(t4 - t1)
    print(kind)
    for k in ['fwd', 'node', 'blk', 'back', 'total']:
        if st[k]: print('   %-5s %s' % (k, q(st[k])))
