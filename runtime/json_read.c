// JSON parsing shared by the runtime's file readers (json_read.h).
#include "runtime/json_read.h"

json_object *json_read_object(const char *path, const char *text, llamoe_err *err) {
    enum json_tokener_error e;
    json_object *root = json_tokener_parse_verbose(text, &e);
    if (!root) {
        fail(err, "%s: malformed JSON: %s", path, json_tokener_error_desc(e));
        return NULL;
    }
    if (!json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        fail(err, "%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

json_object *json_read_member(json_object *o, const char *key) {
    json_object *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v)) return NULL;
    return v;
}
