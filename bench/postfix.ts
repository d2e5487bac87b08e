/*
 * Items 2 and 3: messages/s a private Postfix (test/helpers/postfix.ts, root; every delivery
 * discarded, so smtpd, cleanup, qmgr and the check are measured, not a mailbox store) accepts from
 * smtp-source with no check; with check_policy_service to the fixed-answer server (bench/load.ts),
 * to overquota, to Dovecot quota-status; and with smtpd_milters to the overquota milter and to the
 * pymilter (bench/pymilter_quota.py: lstat of an mbox per recipient, no cache). One overquota
 * frontend serves both faces on the Maildirs of bench/mailboxes.ts (log info: a decision line per
 * recipient, to a file); the pymilter reads an empty spool (room everywhere), milter_default_action
 * = tempfail (a milter failure fails the run instead of passing unseen). The configurations are
 * switched with postconf + `postfix reload`; after each switch one RCPT to a full mailbox must get
 * the check's 452 (250 where it cannot know); each run is `smtp-source -s 20 -m 2000` (one message,
 * recipient and connection each) after an unmeasured warm-up, in --rounds interleaved rounds.
 * Postfix's own msgs/s scatter by ±25%: each figure is the median of its runs, the ratios those of
 * the medians. The policy server and every milter must see every message of their runs.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { dovecotUnavailable } from '../test/helpers/dovecot.js';
import { postfixUnavailable, startPostfix } from '../test/helpers/postfix.js';
import { sendEnvelope } from '../test/helpers/smtp.js';
import { bench, countLines, log, fmtInt, freePort, fmtSpread, interleaved, measureRounds, median, onCleanup, pct, ratioCheck, reapedCpu, requireBuild, runProcess, sample, scratch, spread, startOverquota, treeCpu, usage } from './harness.js';
import { startFixed } from './load.js';
import { dovecotVersion, maildirArgs, pymilterVersion, startMailboxes, startPymilter, userName } from './mailboxes.js';

const SMTP_SOURCE = '/usr/sbin/smtp-source';
const TARGETS = { vsFixed: 0.95, vsDovecot: 1.4, milterVsPymilter: 1.5 };
/** user000 has room (every message is accepted); user001 is full. */
const [RECIPIENT, FULL] = [`${userName(0)}@example.com`, `${userName(1)}@example.com`];
const BASE = 'reject_unauth_destination, permit';
const PYMILTER_LIMIT = 200 * 1024 * 1024;

interface Config {
  key: string;
  label: string;
  item: string;
  restrictions: string;
  milters: string;
  /** What RCPT TO a full mailbox must get through it. */
  probe: number;
  /** CPU of the check's processes; requests or decisions it logged so far (to prove Postfix asked it). */
  cpu?: () => number | null;
  seen?: () => Promise<number>;
}

bench('postfix', { sessions: 20, messages: 2000, rounds: 6, 'warmup-messages': 200 }, async (o) => {
  requireBuild(postfixUnavailable(), dovecotUnavailable());
  const dovecot = await startMailboxes(20, 300); // each smtpd holds its own policy connection: one quota-status process each
  const fixed = await startFixed();
  const milterPort = await freePort();
  const fe = await startOverquota('frontend', (port) => ['frontend', '--policy.listen', `inet:127.0.0.1:${port}`, '--milter.listen', `inet:127.0.0.1:${milterPort}`, ...maildirArgs(dovecot), '--log.level', 'info', '--log.decisions', 'all']);
  const spool = path.join(await scratch(), 'empty-spool');
  await mkdir(spool);
  const py = await startPymilter(spool, PYMILTER_LIMIT);
  const decisions = (face: string) => () => countLines(fe.logFile, [`"face":"${face}"`, '"msg":"decision"']);
  const policy = (port: number) => `reject_unauth_destination, check_policy_service inet:127.0.0.1:${port}, permit`;
  const [item2, item3] = ['2. Postfix end to end', '3. Postfix milter'];
  const configs: Config[] = [
    { key: 'none', label: 'no check', item: item2, restrictions: BASE, milters: '', probe: 250 },
    { key: 'fixed', label: 'fixed-answer server', item: item2, restrictions: policy(fixed.port), milters: '', probe: 250, cpu: () => treeCpu(fixed.pid), seen: fixed.requests },
    { key: 'overquota', label: 'overquota (warm cache, log info)', item: item2, restrictions: policy(fe.port), milters: '', probe: 452, cpu: () => treeCpu(fe.pid), seen: decisions('policy') },
    { key: 'dovecot', label: 'Dovecot quota-status', item: item2, restrictions: policy(dovecot.quotaStatusPort!), milters: '', probe: 452, cpu: () => treeCpu(dovecot.pid) },
    { key: 'milter', label: 'overquota milter', item: item3, restrictions: BASE, milters: `inet:127.0.0.1:${milterPort}`, probe: 452, cpu: () => treeCpu(fe.pid), seen: decisions('milter') },
    { key: 'pymilter', label: 'pymilter', item: item3, restrictions: BASE, milters: `inet:127.0.0.1:${py.port}`, probe: 250, cpu: () => treeCpu(py.pid), seen: () => countLines(py.logFile, ['decision ']) },
  ];
  const postfix = await startPostfix({ smtpdRecipientRestrictions: BASE, extraMain: { milter_default_action: 'tempfail' } });
  onCleanup(() => postfix.stop());
  const postfixVersion = `Postfix ${(await postfix.postconf('-h', 'mail_version')).trim()}`;
  const smtpSource = async (messages: number) => {
    const r = await runProcess(SMTP_SOURCE, ['-s', String(o.sessions), '-m', String(messages), '-t', RECIPIENT, `127.0.0.1:${postfix.smtpPort}`], { limitMs: 120_000 });
    if (r.code !== 0) throw new Error(`smtp-source exited ${r.code}: ${(r.out + r.err).trim()}`);
  };
  const problems: string[] = [];
  let current: Config | null = null;

  const runs = await measureRounds(
    interleaved(configs, o.rounds),
    ({ key: c }) => `${c.label}: smtp-source -s ${o.sessions} -m ${o.messages} (after ${o['warmup-messages']} unmeasured)`,
    async ({ key: c, round }) => {
      if (current !== c) {
        await postfix.postconf('-e', `smtpd_recipient_restrictions = ${c.restrictions}`, `smtpd_milters = ${c.milters}`);
        await postfix.reload();
        current = c;
        const before = await c.seen?.();
        const code = (await sendEnvelope({ port: postfix.smtpPort, from: 'probe@example.org', rcpts: [FULL] })).rcpt[0]?.code;
        if (code !== c.probe) problems.push(`${c.label}: RCPT TO:<${FULL}> got ${code}, expected ${c.probe}`);
        if (before !== undefined && (await c.seen!()) <= before) problems.push(`${c.label}: Postfix did not ask it`);
      }
      if (o['warmup-messages']) await smtpSource(o['warmup-messages']);
      const before = await c.seen?.();
      const meters = { server: c.cpu ?? (() => 0), Postfix: () => treeCpu(postfix.pid), 'smtp-source': reapedCpu, kernel: () => treeCpu(2) };
      const a = sample(meters);
      await smtpSource(o.messages);
      const use = usage(a, sample(meters));
      const seen = before === undefined ? null : (await c.seen!()) - before;
      log(`    ${fmtInt(o.messages / use.seconds)} msgs/s; other CPU ${use.other}%`);
      if (seen !== null && seen < o.messages) problems.push(`${c.label}, round ${round + 1}: it saw ${seen} of ${o.messages} messages`);
      return { c, round, use, other: use.other, mps: o.messages / use.seconds, seen };
    },
    { quietBudgetMs: 20_000 },
  );
  const warnings = (await postfix.maillog()).split('\n').filter((l) => /warning: .*(policy|problem talking|milter)/i.test(l));
  if (warnings.length) problems.push(`${warnings.length} policy or milter warning(s) in the Postfix log, e.g. ${warnings[0]}`);

  const of = (key: string) => runs.filter((r) => r.c.key === key);
  const mps = (key: string) => median(of(key).map((r) => r.mps));
  const vs = (key: string, base: string) => (mps(key) / mps(base)).toFixed(2);
  const rounds = (a: string, b: string) => {
    const ratios = runs.filter((r) => r.c.key === a).map((r) => r.mps / (runs.find((x) => x.c.key === b && x.round === r.round)?.mps ?? NaN));
    return `${a} / ${b} ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`;
  };
  const cpu = (key: string, meter: string) => pct(spread(of(key).map((r) => r.use.cpu[meter] ?? null))?.median);
  return {
    setup: `Each run \`smtp-source -s ${o.sessions} -m ${o.messages} -t ${RECIPIENT}\` after ${o['warmup-messages']} unmeasured messages; ${o.rounds} round(s), every other one in reverse order. Each configuration's msgs/s is the median of its runs (min–max: their spread). CPU in % of one core over the run: the check's processes (Dovecot: all of them), Postfix (every process of the instance, the reaped ones too), smtp-source, the kernel's threads (network and disk work); machine idle (idle + iowait) in % of all cores; other = busy cores minus all of those.`,
    versions: [postfixVersion, dovecotVersion(), pymilterVersion()],
    tables: [
      { head: ['configuration', 'runs', 'msgs/s (median)', 'min–max', 'each run', 'vs no check', 'vs fixed', 'vs Dovecot', 'check CPU', 'Postfix CPU', 'smtp-source CPU'], rows: configs.map((c) => [c.label, of(c.key).length, fmtInt(mps(c.key)), fmtSpread(spread(of(c.key).map((r) => r.mps))), of(c.key).map((r) => fmtInt(r.mps)).join(', '), vs(c.key, 'none'), vs(c.key, 'fixed'), vs(c.key, 'dovecot'), c.cpu ? cpu(c.key, 'server') : '-', cpu(c.key, 'Postfix'), cpu(c.key, 'smtp-source')]) },
      { title: 'Every run, in order:', head: ['#', 'round', 'configuration', 'seconds', 'msgs/s', 'requests or decisions seen', 'check CPU', 'Postfix CPU', 'smtp-source CPU', 'kernel threads', 'machine idle', 'of which iowait', 'other CPU'], rows: runs.map((r, i) => [i + 1, r.round + 1, r.c.label, r.use.seconds.toFixed(2), fmtInt(r.mps), r.seen === null ? '-' : fmtInt(r.seen), r.c.cpu ? pct(r.use.cpu.server) : '-', pct(r.use.cpu.Postfix), pct(r.use.cpu['smtp-source']), pct(r.use.cpu.kernel), pct(r.use.idle), pct(r.use.iowait), pct(r.other)]) },
    ],
    checks: [
      ratioCheck('Postfix msgs/s with overquota / with the fixed-answer server', mps('overquota'), mps('fixed'), 'msgs/s', '>=', TARGETS.vsFixed),
      ratioCheck('Postfix msgs/s with overquota / with Dovecot quota-status', mps('overquota'), mps('dovecot'), 'msgs/s', '>=', TARGETS.vsDovecot),
      ratioCheck('Postfix msgs/s with the overquota milter / with the pymilter', mps('milter'), mps('pymilter'), 'msgs/s', '>=', TARGETS.milterVsPymilter),
    ],
    headline: configs.map((c) => ({ item: c.item, config: c.label, runs: of(c.key).length, figure: mps(c.key), unit: 'msgs/s', spread: spread(of(c.key).map((r) => r.mps)), ratios: c.key === 'none' ? '' : `${vs(c.key, 'none')}× no check${c.item === item2 ? `, ${vs(c.key, 'fixed')}× fixed, ${vs(c.key, 'dovecot')}× Dovecot` : c.key === 'milter' ? `, ${vs('milter', 'pymilter')}× pymilter` : ''}` })),
    notes: [`Within single rounds: ${rounds('overquota', 'fixed')}, ${rounds('overquota', 'dovecot')}, ${rounds('milter', 'pymilter')}.`, ...(problems.length ? [] : ['Checks: every probe got the expected reply, every check saw every message of its runs, no policy or milter warning in the Postfix log.'])],
    problems,
    otherCpu: runs.map((r) => r.other),
  };
});
