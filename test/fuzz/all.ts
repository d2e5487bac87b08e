/*
 * Every fuzz target, in the order a run reports them. A new target is added here and nowhere else.
 * Must never: hold properties itself (they live in targets/).
 */
import { erase, type AnyTarget } from './target.js';
import { policyDecoderTarget } from './targets/policy-decoder.js';
import { milterDecoderTarget } from './targets/milter-decoder.js';
import { milterSessionTarget } from './targets/milter-session.js';
import { replyFormatterTarget } from './targets/reply-formatter.js';
import { replyTemplatesTarget } from './targets/reply-templates.js';
import { recipientTarget } from './targets/recipient.js';
import { mailboxUserTarget } from './targets/mailbox-user.js';

export const TARGETS: AnyTarget[] = [
  erase(policyDecoderTarget),
  erase(milterDecoderTarget),
  erase(milterSessionTarget),
  erase(replyFormatterTarget),
  erase(replyTemplatesTarget),
  erase(recipientTarget),
  erase(mailboxUserTarget),
];
