// The two steps every JSON file of the runtime starts with (config.json, tokenizer.json, the
// placement and load-profile files): parse the text into an object, look up a member.
#pragma once
#include <json-c/json.h>

#include "base/common.h"

// The root object of `text`, or NULL with "PATH: malformed JSON: ..." / "PATH: not a JSON
// object" in err. The caller owns the result (json_object_put).
json_object *json_read_object(const char *path, const char *text, llamoe_err *err);
// o[key], NULL when o is not an object, the key is absent or its value is JSON null.
json_object *json_read_member(json_object *o, const char *key);
