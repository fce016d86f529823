// The unmodified e2b SDK (npm e2b@2.51.0) against husk-agent, in the SDK's
// local mode: E2B_DEBUG=true sends every envd call to
// http://localhost:49983 and skips the control plane (PROTOCOL.md §1.2).
// sdk_test.go runs this with node --test inside a network namespace where
// the agent listens on that address.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, FileNotFoundError, FilesystemEventType } from 'e2b'

let sbx

before(async () => {
  assert.equal(process.env.E2B_DEBUG, 'true', 'run through sdk_test.go')
  sbx = await Sandbox.create()
  assert.equal(sbx.sandboxId, 'debug_sandbox_id')
})

after(async () => {
  await sbx?.kill()
})

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function until(cond, what, ms = 10_000) {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

test('isRunning probes /health', async () => {
  assert.equal(await sbx.isRunning(), true)
})

test('commands.run: output, envs, cwd, users', async () => {
  const r = await sbx.commands.run('echo hello; echo oops >&2')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'hello\n')
  assert.equal(r.stderr, 'oops\n')

  const r2 = await sbx.commands.run('echo "$B $PWD $(id -un)"', { envs: { B: '2' }, cwd: '/tmp', user: 'root' })
  assert.equal(r2.stdout, '2 /tmp root\n')

  const r3 = await sbx.commands.run('id -un; pwd')
  assert.equal(r3.stdout, 'user\n/home/user\n')

  const lines = []
  await sbx.commands.run('for i in 1 2 3; do echo line$i; done', { onStdout: (d) => lines.push(d) })
  assert.equal(lines.join(''), 'line1\nline2\nline3\n')
})

test('commands.run: a failing command throws CommandExitError', async () => {
  await assert.rejects(sbx.commands.run('exit 3'), (err) => {
    assert.ok(err instanceof CommandExitError)
    assert.equal(err.exitCode, 3)
    return true
  })
})

test('commands.run: an unknown user is refused', async () => {
  await assert.rejects(sbx.commands.run('true', { user: 'ghost' }))
})

test('background commands: list, kill, connect', async () => {
  const h = await sbx.commands.run('sleep 30', { background: true })
  assert.ok(h.pid > 0)
  const listed = await sbx.commands.list()
  const mine = listed.find((p) => p.pid === h.pid)
  assert.ok(mine, 'listed')
  assert.equal(mine.cmd, '/bin/bash')
  assert.deepEqual(mine.args, ['-l', '-c', 'sleep 30'])

  assert.equal(await sbx.commands.kill(h.pid), true)
  await assert.rejects(h.wait(), (err) => err instanceof CommandExitError && err.exitCode === -1)
  assert.equal(await sbx.commands.kill(h.pid), false)

  // Disconnect from a running command, then connect again and get the rest.
  const h2 = await sbx.commands.run('echo first; sleep 1; echo second', { background: true })
  await until(() => h2.stdout.includes('first'), 'first output')
  await h2.disconnect()
  const h3 = await sbx.commands.connect(h2.pid)
  const r = await h3.wait()
  assert.equal(r.exitCode, 0)
  assert.match(r.stdout, /second\n$/)
})

test('stdin: sendStdin and closeStdin', async () => {
  const h = await sbx.commands.run('cat; echo done', { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, 'hi there\n')
  await until(() => h.stdout.includes('hi there'), 'echoed stdin')
  await sbx.commands.closeStdin(h.pid)
  const r = await h.wait()
  assert.equal(r.stdout, 'hi there\ndone\n')
})

test('pty: create, input, resize, exit', async () => {
  let out = ''
  const dec = new TextDecoder()
  const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d) } })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode('echo $((6*7)); stty size\n'))
  await until(() => out.includes('42') && out.includes('24 80'), `pty output, got ${JSON.stringify(out)}`)
  await sbx.pty.resize(t.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; exit 0\n'))
  const r = await t.wait()
  assert.equal(r.exitCode, 0)
  assert.ok(out.includes('30 100'), out)
})

test('files: write and read, multipart', async () => {
  const info = await sbx.files.write('hello.txt', 'hello world')
  assert.equal(info.path, '/home/user/hello.txt')
  assert.equal(await sbx.files.read('hello.txt'), 'hello world')
  assert.equal(await sbx.files.read('/home/user/hello.txt', { gzip: true }), 'hello world')

  const many = await sbx.files.write([
    { path: '/tmp/multi/a.txt', data: 'A' },
    { path: 'multi/b.txt', data: 'B' },
  ])
  assert.deepEqual(many.map((i) => i.path), ['/tmp/multi/a.txt', '/home/user/multi/b.txt'])
  assert.equal(await sbx.files.read('/tmp/multi/a.txt'), 'A')
  assert.equal(await sbx.files.read('multi/b.txt'), 'B')

  const bytes = new Uint8Array(300_000)
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) & 0xff
  await sbx.files.write('bin.dat', bytes.buffer)
  const back = await sbx.files.read('bin.dat', { format: 'bytes' })
  assert.deepEqual(Buffer.from(back), Buffer.from(bytes))

  await assert.rejects(sbx.files.read('/no/such/file'), (err) => err instanceof FileNotFoundError)
})

test('files: octet-stream, gzip and metadata', async () => {
  const text = 'compressible '.repeat(10_000)
  const info = await sbx.files.write('gz.txt', text, { gzip: true, metadata: { Owner: 'me', kind: 'test' } })
  assert.equal(info.path, '/home/user/gz.txt')
  assert.deepEqual(info.metadata, { owner: 'me', kind: 'test' })
  assert.equal(await sbx.files.read('gz.txt'), text)
  const got = await sbx.files.getInfo('gz.txt')
  assert.deepEqual(got.metadata, { owner: 'me', kind: 'test' })
  assert.equal(got.size, text.length)

  await sbx.files.write('plain.bin', 'octets', { useOctetStream: true })
  assert.equal(await sbx.files.read('plain.bin'), 'octets')

  const stream = new ReadableStream({
    start(c) { c.enqueue(new TextEncoder().encode('streamed ')); c.enqueue(new TextEncoder().encode('data')); c.close() },
  })
  await sbx.files.write('streamed.txt', stream)
  assert.equal(await sbx.files.read('streamed.txt'), 'streamed data')
})

test('files: list, exists, getInfo, makeDir, rename, remove', async () => {
  assert.equal(await sbx.files.makeDir('d1/d2'), true)
  assert.equal(await sbx.files.makeDir('d1/d2'), false)
  await sbx.files.write('d1/d2/f.txt', 'x')
  const entries = await sbx.files.list('d1', { depth: 2 })
  assert.deepEqual(entries.map((e) => `${e.path}:${e.type}`).sort(), ['/home/user/d1/d2/f.txt:file', '/home/user/d1/d2:dir'])
  assert.equal(await sbx.files.exists('d1/d2/f.txt'), true)
  assert.equal(await sbx.files.exists('d1/nope'), false)
  const info = await sbx.files.getInfo('d1/d2/f.txt')
  assert.equal(info.type, 'file')
  assert.equal(info.size, 1)
  assert.equal(info.owner, 'user')
  assert.ok(info.modifiedTime instanceof Date)
  const moved = await sbx.files.rename('d1/d2/f.txt', 'd1/g.txt')
  assert.equal(moved.path, '/home/user/d1/g.txt')
  await sbx.files.remove('d1')
  assert.equal(await sbx.files.exists('d1'), false)
  await assert.rejects(sbx.files.getInfo('d1'), (err) => err instanceof FileNotFoundError)
})

test('watchDir: recursive, with entries', async () => {
  await sbx.files.makeDir('watched/sub')
  const events = []
  const handle = await sbx.files.watchDir('watched', (e) => events.push(e), { recursive: true, includeEntry: true })
  await sbx.files.write('watched/a.txt', 'a')
  await sbx.files.write('watched/sub/b.txt', 'b')
  await sbx.files.remove('watched/a.txt')
  await until(() => events.some((e) => e.name === 'a.txt' && e.type === FilesystemEventType.REMOVE), 'remove event')
  await until(() => events.some((e) => e.name === 'sub/b.txt'), 'nested event')
  const created = events.find((e) => e.name === 'a.txt' && e.type === FilesystemEventType.CREATE)
  assert.ok(created, JSON.stringify(events))
  assert.equal(created.entry?.path, '/home/user/watched/a.txt')
  assert.ok(events.some((e) => e.name === 'a.txt' && e.type === FilesystemEventType.WRITE))
  await handle.stop()
})
