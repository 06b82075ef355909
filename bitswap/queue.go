package bitswap

import "container/heap"

// wantQueue holds the wants waiting for a node with room, highest
// priority first and, among equals, first come first served. Priorities
// are Kitsune's own (priorityLocked), so the queue shares the nodes
// between upstream peers the way each node's own queue does: a peer that
// just arrived goes ahead of another's deep backlog.
type wantQueue struct {
	items []*want
	seq   uint64
}

func (q *wantQueue) Len() int { return len(q.items) }

func (q *wantQueue) Less(i, j int) bool {
	a, b := q.items[i], q.items[j]
	if a.prio != b.prio {
		return a.prio > b.prio
	}
	return a.qseq < b.qseq
}

func (q *wantQueue) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].qi, q.items[j].qi = i, j
}

func (q *wantQueue) Push(x any) {
	w := x.(*want)
	w.qi = len(q.items)
	q.items = append(q.items, w)
}

func (q *wantQueue) Pop() any {
	n := len(q.items) - 1
	w := q.items[n]
	q.items[n] = nil
	q.items = q.items[:n]
	w.qi = -1
	return w
}

// add queues w unless it is queued already.
func (q *wantQueue) add(w *want) {
	if w.qi >= 0 {
		return
	}
	q.seq++
	w.qseq = q.seq
	heap.Push(q, w)
}

// requeue puts back a want taken out, in its old place.
func (q *wantQueue) requeue(w *want) {
	if w.qi < 0 {
		heap.Push(q, w)
	}
}

// remove takes w out of the queue if it is in it.
func (q *wantQueue) remove(w *want) {
	if w.qi >= 0 {
		heap.Remove(q, w.qi)
	}
}

// next takes the first want out.
func (q *wantQueue) next() *want { return heap.Pop(q).(*want) }

// reset empties the queue.
func (q *wantQueue) reset() {
	for _, w := range q.items {
		w.qi = -1
	}
	clear(q.items)
	q.items = q.items[:0]
}
