/**
 * What stage 1 answers itself for an organization name it cannot pass on:
 * a page a person understands (and JSON for API clients), never a bare
 * status or a download. Pure: the allocator embeds these in its njs module,
 * which fills in the organization id per request.
 */

/** Placeholder the njs module replaces with the request's organization id (a canonical UUID). */
export const ORG_PLACEHOLDER = '{{ORG}}';

export interface Stage1Page {
  status: number;
  html: string;
  json: string;
}

function html(title: string, paragraphs: string[]): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 40rem; margin: 4rem auto; padding: 0 1rem; color: #1f2328; line-height: 1.5; }
h1 { font-size: 1.5rem; } code { background: #f3f4f6; padding: 0 .25rem; border-radius: 3px; } a { color: #0969da; }
</style>
</head>
<body>
<h1>${title}</h1>
${paragraphs.map((p) => `<p>${p}</p>`).join('\n')}
</body>
</html>
`;
}

/** The organization holds no gateway: nothing to pass the request to (404). */
export function noGatewayPage(domain: string): Stage1Page {
  const app = `https://${domain}/`;
  return {
    status: 404,
    html: html('This organization has no gateway right now', [
      `Organization <code>${ORG_PLACEHOLDER}</code> is not running at the moment: no gateway is allocated to this organization, so there is nothing to show here yet.`,
      `<strong>What to do:</strong> open the app at <a href="${app}">${app}</a> and open this organization there. That starts its gateway within a few seconds; then reload this page.`,
      'Gateways stop by themselves after a few minutes without activity, so this page also appears after a quiet period. Nothing is lost: the organization&rsquo;s data is kept and loaded again when it starts.',
    ]),
    json: JSON.stringify({
      success: false,
      code: 'NO_GATEWAY',
      message: `organization ${ORG_PLACEHOLDER} has no gateway right now`,
      organization_id: ORG_PLACEHOLDER,
      retryable: false,
      what_to_do: `start the organization (open it in the app at ${app}, or POST https://ganymede.${domain}/gateway/start), then retry`,
    }),
  };
}

/** The organization has a gateway, but it does not answer (connection refused, timeout): 502. */
export function gatewayDownPage(domain: string): Stage1Page {
  const app = `https://${domain}/`;
  return {
    status: 502,
    html: html('This organization&rsquo;s gateway is not answering', [
      `Organization <code>${ORG_PLACEHOLDER}</code> has a gateway, but it does not answer right now: it may be starting or restarting.`,
      `<strong>What to do:</strong> reload this page in a few seconds. If this persists, stop and start the organization from the app at <a href="${app}">${app}</a>.`,
    ]),
    json: JSON.stringify({
      success: false,
      code: 'GATEWAY_UNREACHABLE',
      message: `the gateway of organization ${ORG_PLACEHOLDER} is not answering`,
      organization_id: ORG_PLACEHOLDER,
      retryable: true,
      what_to_do: 'retry in a few seconds; if it persists, stop and start the organization',
    }),
  };
}
