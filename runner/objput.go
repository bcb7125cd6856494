package runner

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Object uploads that resume instead of purging.
//
// The object store client's Put purges the chunks it wrote when a chunk
// fails (a leader change is enough). The runner role may not purge
// ($JS.API.STREAM.PURGE.* would let it purge every log), so that purge went
// unanswered and held the slot for the whole put's context (a minute), and the
// chunks stayed behind anyway. putObject writes the same layout as Put (chunks
// on $O.<bucket>.C.<nuid>, then the rolled-up meta on $O.<bucket>.M.<name>, so
// every reader's Get works unchanged), but:
//
//   - the nuid is derived from the object's name, so a later attempt (even
//     after a restart) writes to the same chunk subject;
//   - chunks go one at a time, in order, each with a short timeout and a
//     Msg-Id (name and index): an attempt that failed is resumed from the
//     number of chunks the stream holds on that subject, and a chunk that
//     lands late (a reconnect buffer) is dropped as a duplicate;
//   - the meta goes last, so a reader never sees an object with missing
//     chunks, and once it is there the chunks are all used.
//
// A put that never completes leaves its chunks until it does: the log stays
// spooled on the runner's disk (logspool.go) and the next attempt resumes them.

const (
	objChunkSize = 128 * 1024
	// objPublishTimeout bounds one chunk's or the meta's publish: long enough
	// for a busy stream, short enough that a leader change costs seconds, not
	// the minute of a whole put.
	objPublishTimeout = 3 * time.Second
)

// objectNUID names the chunk subject of an object, generation g (a fresh one
// only if an earlier generation holds more chunks than the object has).
func objectNUID(bucket, name string, g int) string {
	sum := sha256.Sum256([]byte(bucket + "\x00" + name + "\x00" + strconv.Itoa(g)))
	return "j" + hex.EncodeToString(sum[:])[:21]
}

// putFreshObject is putObject for a name no earlier attempt used (a run's
// log: its name holds the run's random id), for a caller that sends other
// publishes along: an object of one chunk (most logs) has its chunk and its
// meta published together and both acks awaited, one round trip, without
// asking the stream what it holds (two stream-info requests, among the dearest
// a server answers). A bigger object goes through putObject, chunk by chunk.
//
// Published together, the meta can land while its chunk failed (a leader
// change between the two): the caller then spools the object, and the
// spool's putObject finds no chunk and stores chunk and meta again, so the
// object is whole once the store answers. Only one chunk goes this way: with
// several, a failed one could leave a hole that a resumed put, which counts
// the chunks stored, would not see.
func putFreshObject(ctx context.Context, js jetstream.JetStream, bucket, name, desc, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if size > objChunkSize {
		f.Close()
		_, _, err := putObject(ctx, js, bucket, name, desc, path, -1)
		return err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	if len(data) > objChunkSize { // it grew since the Stat
		f.Close()
		_, _, err := putObject(ctx, js, bucket, name, desc, path, -1)
		return err
	}
	return putFreshData(ctx, js, bucket, name, desc, data)
}

// putFreshData is putFreshObject for an object of at most one chunk held in
// memory (a short job's log, output.inMemory).
func putFreshData(ctx context.Context, js jetstream.JetStream, bucket, name, desc string, data []byte) error {
	if len(data) > objChunkSize {
		return fmt.Errorf("object %s: %d bytes: more than one chunk", name, len(data))
	}
	size := int64(len(data))
	digest := dataDigest(data)
	nuid := objectNUID(bucket, name, 0)
	var futs []jetstream.PubAckFuture
	if size > 0 {
		m := nats.NewMsg("$O." + bucket + ".C." + nuid)
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, nuid+".0")
		fut, err := js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("object %s: chunk: %w", name, err)
		}
		futs = append(futs, fut)
	}
	mm, err := metaMsg(bucket, name, desc, nuid, size, min(size, 1), digest)
	if err != nil {
		return err
	}
	fut, err := js.PublishMsgAsync(mm)
	if err != nil {
		return fmt.Errorf("object %s: meta: %w", name, err)
	}
	futs = append(futs, fut)
	for _, fut := range futs {
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			return fmt.Errorf("object %s: %w", name, err)
		case <-time.After(objPublishTimeout):
			return fmt.Errorf("object %s: no ack in %s", name, objPublishTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// putObject stores at most limit bytes of the file at path as object name in
// bucket (limit < 0: all of it) and returns the bytes stored and their digest
// (the object store's form, "SHA-256=<base64url>"). One call is one attempt; a
// failed attempt is resumed by the next one.
func putObject(ctx context.Context, js jetstream.JetStream, bucket, name, desc, path string, limit int64) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	size := st.Size()
	if limit >= 0 && size > limit {
		size = limit
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return 0, "", err
	}
	chunks := (size + objChunkSize - 1) / objChunkSize
	stream, err := js.Stream(ctx, "OBJ_"+bucket)
	if err != nil {
		return 0, "", fmt.Errorf("object store %s: %w", bucket, err)
	}
	var nuid, subj string
	var stored int64
	for g := 0; ; g++ {
		nuid = objectNUID(bucket, name, g)
		subj = "$O." + bucket + ".C." + nuid
		if stored, err = subjectCount(ctx, stream, subj); err != nil {
			return 0, "", err
		}
		if stored <= chunks {
			break
		}
		if g == 8 {
			return 0, "", fmt.Errorf("object %s: every chunk subject holds more chunks than the object has", name)
		}
	}
	buf := make([]byte, objChunkSize)
	for i := stored; i < chunks; i++ {
		n := min(int64(objChunkSize), size-i*objChunkSize)
		if _, err := f.ReadAt(buf[:n], i*objChunkSize); err != nil && !errors.Is(err, io.EOF) {
			return 0, "", err
		}
		m := nats.NewMsg(subj)
		m.Data = buf[:n]
		m.Header.Set(jetstream.MsgIDHeader, nuid+"."+strconv.FormatInt(i, 10))
		pctx, cancel := context.WithTimeout(ctx, objPublishTimeout)
		_, err := js.PublishMsg(pctx, m)
		cancel()
		if err != nil {
			return 0, "", fmt.Errorf("object %s: chunk %d of %d: %w", name, i+1, chunks, err)
		}
	}
	digest := "SHA-256=" + base64.URLEncoding.EncodeToString(h.Sum(nil))
	return size, digest, putMeta(ctx, js, bucket, name, desc, nuid, size, chunks, digest)
}

// putMeta stores an object's meta, after its chunks: the object is whole.
func putMeta(ctx context.Context, js jetstream.JetStream, bucket, name, desc, nuid string, size, chunks int64, digest string) error {
	mm, err := metaMsg(bucket, name, desc, nuid, size, chunks, digest)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, objPublishTimeout)
	defer cancel()
	if _, err := js.PublishMsg(pctx, mm); err != nil {
		return fmt.Errorf("object %s: meta: %w", name, err)
	}
	return nil
}

// metaMsg is the rolled-up meta message of an object.
func metaMsg(bucket, name, desc, nuid string, size, chunks int64, digest string) (*nats.Msg, error) {
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Description: desc, Opts: &jetstream.ObjectMetaOptions{ChunkSize: objChunkSize}},
		Bucket:     bucket, NUID: nuid, Size: uint64(size), Chunks: uint32(chunks),
		Digest: digest,
	}
	mm := nats.NewMsg("$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	mm.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	var err error
	if mm.Data, err = json.Marshal(info); err != nil {
		return nil, err
	}
	return mm, nil
}

// fileDigest is the object store's digest of the file at path, as putObject
// would store it whole: what a result names for a log still in the spool.
func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "SHA-256=" + base64.URLEncoding.EncodeToString(h.Sum(nil)), nil
}

// dataDigest is the object store's digest of data.
func dataDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

// subjectCount is the number of messages the stream holds on subject.
func subjectCount(ctx context.Context, stream jetstream.Stream, subject string) (int64, error) {
	ictx, cancel := context.WithTimeout(ctx, objPublishTimeout)
	defer cancel()
	info, err := stream.Info(ictx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("count chunks: %w", err)
	}
	return int64(info.State.Subjects[subject]), nil
}
