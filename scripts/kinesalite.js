// Starts kinesalite, an in-memory Kinesis, on 127.0.0.1 only (its own CLI binds 0.0.0.0),
// with no resharding or stream-creation delays. scripts/services installs kinesalite.
//
//   node scripts/kinesalite.js PORT [TOOLS_DIR]    TOOLS_DIR: $SLUICE_AWS_TOOLS or .tools/aws
//
// With a pipe for stdin (as tests/aws_support starts it) it exits when the pipe closes, so a
// test process killed before it could stop the server leaves none behind.
'use strict'
const fs = require('fs')
const path = require('path')

const port = Number(process.argv[2])
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node scripts/kinesalite.js PORT [TOOLS_DIR]')
  process.exit(2)
}
const tools = process.argv[3] || process.env.SLUICE_AWS_TOOLS || path.join(__dirname, '..', '.tools', 'aws')
const kinesalite = require(path.join(path.resolve(tools), 'node_modules', 'kinesalite'))

kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 })
  .listen(port, '127.0.0.1', () => console.log(`kinesalite listening at http://127.0.0.1:${port}`))

if (fs.fstatSync(0).isFIFO()) {
  process.stdin.on('end', () => process.exit(0))
  process.stdin.on('error', () => process.exit(0))
  process.stdin.resume()
}
