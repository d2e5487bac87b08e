'use strict'
/* global CONT, DENY, DENYSOFT */
/*
 * haraka-plugin-overquota: asks overquota about each recipient Haraka takes and answers a full
 * mailbox with "452 4.2.2 Mailbox full, try again later", so the sending server keeps the message
 * and retries instead of it bouncing later (backscatter).
 *
 * It speaks the Postfix policy delegation protocol to `overquota frontend`'s policy service, over
 * one persistent connection per Haraka process (requests answered in order), and runs on
 * rcpt_ok: after a rcpt plugin (rcpt_to.in_host_list, qmail-deliverable, aliases, ...) has taken
 * the recipient as ours, as Postfix asks after reject_unlisted_recipient. Strangers keep their 5xx,
 * and no plugin listed before this one can skip it by answering OK.
 *
 * Never: refuse mail for our own trouble. overquota down, slow (config/overquota.ini timeout, kept
 * under Haraka's own plugin timeout, which would answer 450) or answering garbage: the recipient
 * passes (CONT) and the log says so. No dependencies: it runs in any Haraka, from any folder.
 */
const net = require('node:net')

/** An answer this long without its end is not overquota's: the connection is dropped. */
const MAX_REPLY_BYTES = 64 * 1024
/**
 * Close our idle connection before overquota closes it (policy.idle_timeout, 330s): a request
 * written just as the server closes would get no answer and pass unchecked (Postfix closes after
 * smtpd_policy_service_max_idle, 300s, for the same reason).
 */
const IDLE_CLOSE_MS = 300_000
const DEFAULTS = Object.freeze({ host: '127.0.0.1', port: 10033, path: '', timeout: 3 })

/**
 * Haraka sends the code of a reply object whose class is named DSN (connection.js respond()), and
 * its `reply` as the text: how a plugin answers 452 and 552 rather than Haraka's 450 and 550.
 * haraka-dsn's class is one; this is ours, so that the plugin needs no dependencies.
 */
class DSN {
  constructor(code, reply) {
    this.code = code
    this.reply = reply
  }
}

/** One persistent policy connection: requests written in order, answers matched in order. */
class PolicyClient {
  constructor(endpoint, timeoutMs) {
    this.endpoint = endpoint
    this.timeoutMs = timeoutMs
    this.socket = null
    this.buffer = ''
    /** Requests written and not yet answered, oldest first: { settle, timer }. */
    this.waiting = []
  }

  /** The reply block ("action=...") of one request, or null with the reason: the caller fails open. */
  ask(request) {
    return new Promise((resolve) => {
      const socket = this.socket ?? this.connect()
      const waiter = {
        settle: (reply, why) => {
          clearTimeout(waiter.timer)
          resolve({ reply, why })
        },
        // overquota answers in order: a late answer holds every later one, so start afresh.
        timer: setTimeout(() => this.reset(`no answer within ${this.timeoutMs / 1000}s`), this.timeoutMs),
      }
      this.waiting.push(waiter)
      try {
        socket.write(request)
      } catch (err) {
        this.reset(err.message)
      }
    })
  }

  connect() {
    const socket = net.connect(this.endpoint)
    socket.setEncoding('utf8')
    socket.setNoDelay(true)
    socket.setTimeout(IDLE_CLOSE_MS)
    // A socket already replaced (reset) still reports its end: only the current one counts.
    const current = (handle) => (...args) => {
      if (this.socket === socket) handle(...args)
    }
    socket.on('timeout', current(() => this.waiting.length === 0 && this.reset('idle')))
    socket.on('data', current((text) => this.receive(text)))
    socket.on('error', current((err) => this.reset(err.code || err.message)))
    socket.on('close', current(() => this.reset('connection closed by overquota')))
    this.socket = socket
    return socket
  }

  receive(text) {
    this.buffer += text
    let end
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const reply = this.buffer.slice(0, end)
      this.buffer = this.buffer.slice(end + 2)
      const waiter = this.waiting.shift()
      if (!waiter) return this.reset('an answer to no request')
      waiter.settle(reply, null)
    }
    if (this.buffer.length > MAX_REPLY_BYTES) this.reset(`an answer over ${MAX_REPLY_BYTES} bytes`)
  }

  /** Drop the connection; every request still waiting passes unchecked. */
  reset(why) {
    const socket = this.socket
    this.socket = null
    this.buffer = ''
    socket?.destroy()
    for (const waiter of this.waiting.splice(0)) waiter.settle(null, why)
  }
}

exports.register = function () {
  this.load_overquota_ini()
}

exports.load_overquota_ini = function () {
  const ini = this.config.get('overquota.ini', () => this.load_overquota_ini())
  const main = { ...DEFAULTS, ...ini.main }
  const port = Number(main.port)
  let timeout = Number(main.timeout)
  const problems = []
  if (!main.path && !(Number.isInteger(port) && port > 0 && port < 65536)) problems.push(`port ${main.port} is not a TCP port`)
  if (!(timeout > 0)) problems.push(`timeout ${main.timeout} is not a number of seconds`)
  if (problems.length) {
    this.logerror(`config/overquota.ini: ${problems.join('; ')}; using the defaults`)
    Object.assign(main, DEFAULTS)
    timeout = DEFAULTS.timeout
  }
  // Haraka answers 450 for a hook that outlives its plugin timeout: ours must end first.
  if (this.timeout && timeout >= this.timeout) {
    const under = Math.max(this.timeout - 1, this.timeout / 2)
    this.logwarn(`config/overquota.ini: timeout ${timeout}s is not under Haraka's ${this.timeout}s for this plugin; using ${under}s`)
    timeout = under
  }
  const endpoint = main.path ? { path: String(main.path) } : { host: String(main.host), port: Number(main.port) }
  this.client?.reset('configuration changed')
  this.client = new PolicyClient(endpoint, timeout * 1000)
}

/** MAIL FROM's SIZE= reaches only this hook: kept for the recipients of the transaction. */
exports.hook_mail = function (next, connection, params) {
  const size = params?.[1]?.SIZE
  if (connection.transaction) connection.transaction.notes.overquota_size = /^\d{1,15}$/.test(String(size)) ? Number(size) : 0
  next()
}

exports.hook_rcpt_ok = function (next, connection, rcpt) {
  const txn = connection.transaction
  if (!txn || !rcpt) return next()
  const recipient = addressOf(rcpt)
  let answered = false
  const answer = (...args) => {
    if (answered) return
    answered = true
    next(...args)
  }
  this.client
    .ask(policyRequest(connection, txn, recipient))
    .then(({ reply, why }) => {
      if (reply === null) {
        connection.logwarn(this, `overquota gave no answer (${why}): <${recipient}> passed unchecked`)
        return answer(CONT)
      }
      const [verdict, said] = judge(reply)
      if (verdict === 'defer') return answer(DENYSOFT, said)
      if (verdict === 'refuse') return answer(DENY, said)
      if (verdict === 'log') connection.loginfo(this, `overquota: ${said} <${recipient}>`)
      if (verdict === 'unknown') connection.logwarn(this, `overquota: unknown action "${said}": <${recipient}> passed on`)
      answer(CONT)
    })
    .catch((err) => {
      connection.logerror(this, `overquota plugin error (${err.message}): <${recipient}> passed unchecked`)
      answer(CONT)
    })
}

exports.shutdown = function () {
  this.client?.reset('shutting down')
}

/** Postfix's form of an address: the local part unquoted, @, the domain; '' for the null sender. */
function addressOf(address) {
  if (!address?.user) return ''
  return address.host ? `${address.user}@${address.host}` : address.user
}

/** One value on one line: a line break would start another attribute. */
const oneLine = (value) => String(value ?? '').replace(/[\r\n]/g, '')

/**
 * The attributes overquota reads. instance names the transaction (Haraka's uuid), so several RCPTs
 * of one message reserve room once; it is also the queue_id overquota's log lines carry.
 */
function policyRequest(connection, txn, recipient) {
  return [
    'request=smtpd_access_policy',
    'protocol_state=RCPT',
    `protocol_name=${connection.hello?.verb === 'EHLO' ? 'ESMTP' : 'SMTP'}`,
    `queue_id=${oneLine(txn.uuid)}`,
    `client_address=${oneLine(connection.remote?.ip)}`,
    `sender=${oneLine(addressOf(txn.mail_from))}`,
    `recipient=${oneLine(recipient)}`,
    `size=${txn.notes.overquota_size || 0}`,
    `instance=${oneLine(txn.uuid)}`,
    '',
    '',
  ].join('\n')
}

/*
 * overquota's action (a Postfix access(5) action, any case) in Haraka's terms, as Postfix's
 * smtpd_check.c reads it: overquota's replies are configurable (e.g. "DEFER_IF_PERMIT 4.2.2
 * Mailbox full"), and a recipient Postfix refuses must not pass here.
 * - "4NN text" defers with that code and text; "5NN text" refuses (the message can never fit).
 * - DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT defer with Postfix's access_map_defer_code (450),
 *   REJECT refuses with its access_map_reject_code (554). DEFER_IF_PERMIT defers here as Postfix
 *   does when the rest of its list permits; DEFER_IF_REJECT too, as every overquota face counts it
 *   a refusal (Postfix alone would defer only if a later restriction rejected).
 * - A reply without a status code gets Postfix's 4.7.1 or 5.7.1; without a text, Postfix's words.
 * - WARN (dry run) and HOLD are logged and pass: Haraka has no hold queue.
 * - DUNNO and OK pass; any other action passes and is logged.
 */
const NAMED_CODES = Object.freeze({ DEFER: 450, DEFER_IF_PERMIT: 450, DEFER_IF_REJECT: 450, REJECT: 554 })
const NAMED_DEFAULT_TEXT = Object.freeze({ DEFER_IF_PERMIT: 'Service unavailable', DEFER_IF_REJECT: 'Service unavailable' })
const DEFAULT_TEXT = 'Access denied'
const LOGGED = new Set(['WARN', 'HOLD'])
const PASSED = new Set(['DUNNO', 'OK'])

/** [verdict, what to say]: defer or refuse with a DSN, log with the action, unknown with the action, pass. */
function judge(reply) {
  const action = /^action=(.*)$/m.exec(reply)?.[1] ?? ''
  const [, word, rest] = /^(\S*)[ \t]*(.*)$/.exec(action)
  const upper = word.toUpperCase()
  // Postfix reads a code only with a text after it: a bare "452" is all-numeric, which means OK.
  const code = /^[45]\d\d$/.test(word) ? (rest === '' ? undefined : Number(word)) : NAMED_CODES[upper]
  if (code !== undefined) {
    const status = /^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)/.exec(rest)
    const text = (status ? rest.slice(status[0].length) : rest) || NAMED_DEFAULT_TEXT[upper] || DEFAULT_TEXT
    const dsn = new DSN(code, `${status ? status[1] : `${String(code)[0]}.7.1`} ${text}`)
    return [code < 500 ? 'defer' : 'refuse', dsn]
  }
  if (LOGGED.has(upper)) return ['log', action]
  if (PASSED.has(upper)) return ['pass', null]
  return ['unknown', action]
}
