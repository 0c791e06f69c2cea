// Introspection of a running marketplace by graphql-js, the reference
// implementation (npm `graphql`), as GraphQL clients and tools do it:
// `getIntrospectionQuery()` with its default options, then with every option
// GraphiQL turns on (descriptions, specifiedByUrl, directiveIsRepeatable,
// schemaDescription, inputValueDeprecation, and oneOf where this graphql
// version has it). Each answer must have no errors and must build with
// `buildClientSchema`, and the built schema must have `Query.listings`.
// Any refusal (such as a depth or complexity limit) fails the run.
//
// Usage: node introspect.mjs http://127.0.0.1:8080/graphql
import { buildClientSchema, getIntrospectionQuery, isObjectType, version } from 'graphql';

const url = process.argv[2];
if (!url) {
  console.error('usage: node introspect.mjs <graphql-url>');
  process.exit(2);
}

// Every option GraphiQL's schema loader may ask for. `oneOf` exists from
// graphql 16.9 on: getIntrospectionQuery's own defaults tell whether it is
// known (an unknown option is silently ignored, so probe the query text).
const everything = {
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
};
if (getIntrospectionQuery({ oneOf: true }).includes('isOneOf')) everything.oneOf = true;

const variants = [
  ['default options', undefined],
  [`every option GraphiQL uses (${Object.keys(everything).join(', ')})`, everything],
];

let failures = 0;
console.log(`== graphql-js ${version} introspection against ${url}`);
for (const [name, options] of variants) {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json, application/json' },
      body: JSON.stringify({ query: getIntrospectionQuery(options), operationName: 'IntrospectionQuery' }),
    });
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      throw new Error(`HTTP ${response.status}, not JSON: ${text.slice(0, 300)}`);
    }
    if (!response.ok || body.errors?.length || !body.data) {
      throw new Error(`HTTP ${response.status}, refused: ${JSON.stringify(body.errors ?? body).slice(0, 400)}`);
    }
    const schema = buildClientSchema(body.data);
    const query = schema.getQueryType();
    const listings = query && isObjectType(query) ? query.getFields().listings : undefined;
    if (!listings) throw new Error(`the built schema has no Query.listings (query type: ${query?.name})`);
    const types = Object.keys(schema.getTypeMap()).filter((t) => !t.startsWith('__')).length;
    console.log(`ok    ${name}: buildClientSchema built ${types} types; Query.listings: ${listings.type}`);
  } catch (e) {
    console.log(`error ${name}: ${e.message}`);
    failures += 1;
  }
}
process.exit(failures ? 1 : 0);
