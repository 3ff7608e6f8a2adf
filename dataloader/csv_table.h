// Real tables: CSV files as people have them, for predict and for the trainer's evaluation.
//
// Text (RFC 4180): comma separated; a field may be wrapped in double quotes, and then holds
// commas, line breaks and doubled quotes ("") verbatim. Spaces around unquoted fields are
// trimmed; blank lines are skipped; CRLF line ends and a UTF-8 byte-order mark are accepted.
// The first record is the header (predict requires one; the trainer's eval table may omit it:
// then the first record is a header only if one of its fields is neither a number nor a
// missing-cell spelling).
//
// Meaning, fixed by the train table (the schema): the label column is the last one, or the one
// named by --label. Labels are integers or strings; the classes are the distinct train labels,
// sorted numerically when all of them are numbers (equal values are one class, named by their
// first spelling), else as byte strings. A feature column with any non-numeric train cell is
// categorical: its categories are the distinct train cells, sorted as byte strings, and a cell
// is encoded as the index of its category (0, 1, 2, ... as a float); a test category the train
// table lacks counts as missing. Missing cells are spelled exactly "", "NA", "NaN" or "?"; they
// take the train mean of the column (categorical: the train table's most frequent category,
// the first in sorted order on a tie), or are refused (CSV_MISSING_ERROR).
// A test table has the train header's names in the same order; its label column is optional.
//
// Every irregularity is one error line naming the file, the line and the column.
#pragma once
#include "table_batch.h"

typedef enum { CSV_MISSING_MEAN, CSV_MISSING_ERROR } CsvMissing;
typedef enum { CSV_HEADER_REQUIRED, CSV_HEADER_AUTO } CsvHeaderMode;

// ----------------------------------------------------------------------------
// text: records and fields

typedef struct {
    char* path;
    char* text;      // the file, with every field unquoted and NUL-terminated in place
    int rows;        // data records (the header excluded)
    int columns;     // fields per record
    char** header;   // (columns) names; NULL when the file has no header
    int header_line; // line of the header (0: none)
    char** cells;    // (rows, columns) field text
    int* line;       // (rows) the line each data record starts on
} CsvText;

static void csv_grow(void** p, size_t* capacity, size_t needed, size_t elem) {
    if (needed <= *capacity) return;
    size_t c = *capacity ? *capacity : 1024;
    while (c < needed) c *= 2;
    void* q = realloc(*p, c * elem);
    if (!q) { fprintf(stderr, "mosaic: error: out of memory growing a CSV table to %zu bytes\n", c * elem); mosaic_exit(1); }
    *p = q;
    *capacity = c;
}

// missing spellings, exactly as written (case included)
static int csv_is_missing(const char* s) { return !*s || !strcmp(s, "NA") || !strcmp(s, "NaN") || !strcmp(s, "?"); }

// 1 if the whole field is a number (strtod's syntax; NaN and Inf spellings included)
static int csv_parse_number(const char* s, double* value) {
    if (*s == '\0') return 0;
    char* end;
    *value = strtod(s, &end);
    return *end == '\0';
}

static void csv_text_read(CsvText* t, const char* path, CsvHeaderMode header_mode) {
    memset(t, 0, sizeof(*t));
    t->path = strdup(path);
    dataloader_check_regular_file(path);
    FILE* f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
    const long size = ftell(f);
    if (size < 0) mosaic_fail("cannot read '%s': %s", path, strerror(errno));
    rewind(f);
    char* text = (char*)mallocCheck((size_t)size + 1);
    fread_check(text, 1, (size_t)size, f, path);
    fclose(f);
    text[size] = '\0';
    t->text = text;
    // a binary file (a model, a spreadsheet, UTF-16 text) has control bytes; say where
    {
        int line_no = 1, col = 1;
        for (long i = 0; i < size; i++, col++) {
            const unsigned char b = (unsigned char)text[i];
            if (b == '\n') { line_no++; col = 0; continue; }
            if (b < 0x20 && b != '\t' && b != '\r' && b != '\f')
                mosaic_fail("'%s' is not a CSV text file: byte 0x%02x at line %d, character %d (binary data?)", path, b, line_no, col);
        }
    }
    char* p = text;
    char* const end = text + size;
    if (size >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3; // UTF-8 byte-order mark
    size_t cells_cap = 0, line_cap = 0, n_cells = 0;
    char** cells = NULL;
    int* lines = NULL;
    int records = 0, line_no = 1, first_line = 0;
    while (p < end) {
        // blank line
        char* q = p;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\f')) q++;
        if (q == end) break;
        if (*q == '\n') { p = q + 1; line_no++; continue; }
        const int record_line = line_no;
        int fields = 0;
        for (;;) { // one field per pass; p is at its first character
            while (p < end && (*p == ' ' || *p == '\t')) p++;
            char* w = p; // write cursor: unquoting only shrinks, so w never passes p
            char* start = w;
            if (p < end && *p == '"') {
                const int open_line = line_no;
                p++;
                for (;;) {
                    if (p == end)
                        mosaic_fail("'%s' line %d, column %d: a quoted field is never closed (the quote opens there)", path,
                                    open_line, fields + 1);
                    if (*p == '"') {
                        if (p + 1 < end && p[1] == '"') { *w++ = '"'; p += 2; continue; }
                        p++;
                        break;
                    }
                    if (*p == '\n') line_no++;
                    *w++ = *p++;
                }
                while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
                if (p < end && *p != ',' && *p != '\n')
                    mosaic_fail("'%s' line %d, column %d: text after the closing quote of a quoted field (RFC 4180: "
                                "double the quotes inside a quoted field)", path, line_no, fields + 1);
            } else {
                while (p < end && *p != ',' && *p != '\n') {
                    if (*p == '"')
                        mosaic_fail("'%s' line %d, column %d: a quote inside an unquoted field (RFC 4180: quote the whole "
                                    "field and double the quotes inside it)", path, line_no, fields + 1);
                    *w++ = *p++;
                }
                while (w > start && (w[-1] == ' ' || w[-1] == '\t' || w[-1] == '\r' || w[-1] == '\f')) w--;
            }
            const char delimiter = p < end ? *p : '\n';
            if (p < end) p++;
            *w = '\0';
            csv_grow((void**)&cells, &cells_cap, n_cells + 1, sizeof(char*));
            cells[n_cells++] = start;
            fields++;
            if (delimiter == '\n') { line_no++; break; }
        }
        if (records == 0) {
            t->columns = fields;
            first_line = record_line;
        } else if (fields != t->columns) {
            mosaic_fail("'%s' line %d, column %d: the row has %d fields where line %d has %d", path, record_line,
                        (fields < t->columns ? fields : t->columns) + 1, fields, first_line, t->columns);
        }
        csv_grow((void**)&lines, &line_cap, (size_t)records + 1, sizeof(int));
        lines[records++] = record_line;
    }
    if (records == 0) mosaic_fail("'%s' is empty (line 1, column 1: no header and no rows)", path);
    int has_header = header_mode == CSV_HEADER_REQUIRED;
    if (header_mode == CSV_HEADER_AUTO)
        for (int c = 0; c < t->columns; c++) {
            double v;
            if (!csv_is_missing(cells[c]) && !csv_parse_number(cells[c], &v)) has_header = 1;
        }
    if (has_header) {
        t->header = cells;
        t->header_line = lines[0];
        for (int c = 0; c < t->columns; c++)
            if (!cells[c][0]) mosaic_fail("'%s' line %d, column %d: the header names no column here", path, lines[0], c + 1);
    }
    t->rows = records - has_header;
    t->cells = cells + (size_t)has_header * t->columns;
    t->line = lines + has_header;
    if (t->rows == 0) mosaic_fail("'%s' has a header (line %d) but no data rows (line %d, column 1)", path, lines[0], line_no);
}

static void csv_text_free(CsvText* t) {
    free(t->path);
    free(t->text);
    free(t->header ? t->header : t->cells);
    free(t->header ? t->line - 1 : t->line);
    memset(t, 0, sizeof(*t));
}

// "column 3 ('age')", or "column 3" without a header
static const char* csv_column_name(char* out, size_t size, const CsvText* t, int c) {
    if (t->header) snprintf(out, size, "column %d ('%.60s')", c + 1, t->header[c]);
    else snprintf(out, size, "column %d", c + 1);
    return out;
}

// ----------------------------------------------------------------------------
// the schema: what the train table fixes

typedef struct {
    int columns;          // in the train file
    int label_column;     // its index there
    int features;         // columns - 1
    int* feature_column;  // (features) index in the train file
    int* categorical;     // (features) 1: categorical
    int* num_categories;  // (features)
    char*** categories;   // (features) sorted category names (pointers into the train text)
    float* fill;          // (features) value of a missing cell: train mean, or most frequent category
    int num_classes;
    char** class_names;   // (num_classes) as first spelled in the train file
    double* class_values; // (num_classes) numeric labels, ascending; NULL for string labels
    char** names;         // (columns) the train header, or NULL
} CsvSchema;

static int csv_strcmp(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }
static int csv_doublecmp(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

// index of s in the sorted array, or -1
static int csv_find_string(char* const* sorted, int n, const char* s) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2, c = strcmp(sorted[mid], s);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}
static int csv_find_double(const double* sorted, int n, double v) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (sorted[mid] == v) return mid;
        if (sorted[mid] < v) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

// a number cell (not missing) checked for Inf and for NaN spellings that are not missing ones
static int csv_number_cell(const CsvText* t, int r, int c, double* v) {
    const char* s = t->cells[(size_t)r * t->columns + c];
    if (!csv_parse_number(s, v)) return 0;
    char col[96];
    if (isnan(*v))
        mosaic_fail("'%s' line %d, %s: '%.40s' is not a missing-cell spelling: write a missing cell as empty, NA, NaN or ?",
                    t->path, t->line[r], csv_column_name(col, sizeof(col), t, c), s);
    if (isinf(*v) || !isfinite((float)*v))
        mosaic_fail("'%s' line %d, %s: %s '%.40s' is not a finite float32 value", t->path, t->line[r],
                    csv_column_name(col, sizeof(col), t, c), isinf(*v) ? "Inf" : "the value", s);
    return 1;
}

// the label column: by name, else the last
static int csv_label_column(const CsvText* t, const char* label) {
    if (!label) return t->columns - 1;
    if (!t->header) mosaic_fail("'%s' has no header, so --label '%s' names no column", t->path, label);
    int found = -1;
    for (int c = 0; c < t->columns; c++) {
        if (strcmp(t->header[c], label)) continue;
        if (found >= 0)
            mosaic_fail("'%s' line %d, columns %d and %d are both named '%s': --label is ambiguous", t->path, t->header_line,
                        found + 1, c + 1, label);
        found = c;
    }
    if (found < 0) mosaic_fail("'%s' line %d: no column is named '%s' in the header (--label)", t->path, t->header_line, label);
    return found;
}

static void csv_schema_build(CsvSchema* s, const CsvText* t, const char* label) {
    memset(s, 0, sizeof(*s));
    const int C = t->columns, N = t->rows;
    char col[96];
    if (C < 2)
        mosaic_fail("'%s' line %d, column 1: one column; a table needs features and a label", t->path,
                    t->header ? t->header_line : t->line[0]);
    s->columns = C;
    s->label_column = csv_label_column(t, label);
    s->features = C - 1;
    s->names = t->header;
    // classes
    {
        const int lc = s->label_column;
        int numeric = 1;
        for (int r = 0; r < N; r++) {
            const char* cell = t->cells[(size_t)r * C + lc];
            double v;
            if (csv_is_missing(cell))
                mosaic_fail("'%s' line %d, %s: the label is missing ('%s'); every train row needs one", t->path, t->line[r],
                            csv_column_name(col, sizeof(col), t, lc), cell);
            if (!csv_number_cell(t, r, lc, &v)) numeric = 0;
        }
        char** names = (char**)mallocCheck((size_t)N * sizeof(char*));
        int K = 0;
        if (numeric) {
            double* values = (double*)mallocCheck((size_t)N * sizeof(double));
            for (int r = 0; r < N; r++) csv_parse_number(t->cells[(size_t)r * C + lc], &values[r]);
            qsort(values, (size_t)N, sizeof(double), csv_doublecmp);
            for (int r = 0; r < N; r++)
                if (K == 0 || values[r] != values[K - 1]) values[K++] = values[r];
            for (int r = N - 1; r >= 0; r--) { // the first spelling names the class
                double v = 0.0;
                csv_parse_number(t->cells[(size_t)r * C + lc], &v);
                names[csv_find_double(values, K, v)] = t->cells[(size_t)r * C + lc];
            }
            s->class_values = values;
        } else {
            for (int r = 0; r < N; r++) names[r] = t->cells[(size_t)r * C + lc];
            qsort(names, (size_t)N, sizeof(char*), csv_strcmp);
            for (int r = 0; r < N; r++)
                if (K == 0 || strcmp(names[r], names[K - 1])) names[K++] = names[r];
        }
        s->num_classes = K;
        s->class_names = names;
        if (K < 2)
            mosaic_fail("'%s' %s: every label is '%.40s' (lines %d-%d); classification needs at least 2 classes", t->path,
                        csv_column_name(col, sizeof(col), t, lc), names[0], t->line[0], t->line[N - 1]);
    }
    // features: numeric or categorical, and the value of a missing cell
    const int F = s->features;
    s->feature_column = (int*)mallocCheck((size_t)F * sizeof(int));
    s->categorical = (int*)callocCheck((size_t)F * sizeof(int));
    s->num_categories = (int*)callocCheck((size_t)F * sizeof(int));
    s->categories = (char***)callocCheck((size_t)F * sizeof(char**));
    s->fill = (float*)callocCheck((size_t)F * sizeof(float));
    for (int j = 0, c = 0; c < C; c++)
        if (c != s->label_column) s->feature_column[j++] = c;
    for (int j = 0; j < F; j++) {
        const int c = s->feature_column[j];
        double sum = 0.0, v;
        long present = 0;
        for (int r = 0; r < N; r++) {
            const char* cell = t->cells[(size_t)r * C + c];
            if (csv_is_missing(cell)) continue;
            if (csv_number_cell(t, r, c, &v)) { sum += v; present++; }
            else s->categorical[j] = 1;
        }
        if (!s->categorical[j]) { // the mean of the present cells (0 if none is)
            s->fill[j] = present ? (float)(sum / present) : 0.0f;
            continue;
        }
        char** cats = (char**)mallocCheck((size_t)N * sizeof(char*));
        int n = 0;
        for (int r = 0; r < N; r++) {
            char* cell = t->cells[(size_t)r * C + c];
            if (!csv_is_missing(cell)) cats[n++] = cell;
        }
        qsort(cats, (size_t)n, sizeof(char*), csv_strcmp);
        int distinct = 0, best = 0, best_count = 0;
        for (int i = 0; i < n;) { // runs of equal strings: keep one, count the run
            int k = i;
            while (k < n && !strcmp(cats[k], cats[i])) k++;
            if (k - i > best_count) { best_count = k - i; best = distinct; }
            cats[distinct++] = cats[i];
            i = k;
        }
        s->categories[j] = cats;
        s->num_categories[j] = distinct;
        s->fill[j] = (float)best;
    }
}

static void csv_schema_free(CsvSchema* s) {
    for (int j = 0; j < s->features; j++) free(s->categories ? s->categories[j] : NULL);
    free(s->categories);
    free(s->feature_column);
    free(s->categorical);
    free(s->num_categories);
    free(s->fill);
    free(s->class_names);
    free(s->class_values);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// a table encoded by a schema: numbers the model reads

typedef struct {
    int rows, features, num_classes;
    float* x;           // (rows, features)
    int* y;             // (rows) class index; -1 when the file has no labels
    int has_labels;
    char* path;
    char** class_names; // (num_classes) the schema's
    long missing;       // cells imputed (unseen categories included)
    long unseen;        // test categories the train table lacks
    CsvSchema own;      // csv_table_read: the schema of the table itself
} CsvTable;

// the class of a label cell, or -1 if the schema has no such class
static int csv_class_of(const CsvSchema* s, const CsvText* t, int r, int c) {
    const char* cell = t->cells[(size_t)r * t->columns + c];
    if (s->class_values) {
        double v;
        if (!csv_number_cell(t, r, c, &v)) return -1;
        return csv_find_double(s->class_values, s->num_classes, v);
    }
    for (int k = 0; k < s->num_classes; k++) // few classes: a scan (the names are not sorted numerically)
        if (!strcmp(s->class_names[k], cell)) return k;
    return -1;
}

// Encodes `t` by the schema. The train table itself (train = 1) has the schema's columns; a
// test table has the train header's names in the same order, the label column optional.
static void csv_table_encode(CsvTable* out, const CsvText* t, const CsvSchema* s, CsvMissing missing, int train,
                             const char* train_path) {
    memset(out, 0, sizeof(*out));
    char col[96];
    const int C = t->columns, N = t->rows, F = s->features;
    int label_column = s->label_column;
    int* source = (int*)mallocCheck((size_t)F * sizeof(int)); // (F) column of feature j in t
    if (train) {
        memcpy(source, s->feature_column, (size_t)F * sizeof(int));
    } else {
        if (!t->header) mosaic_fail("'%s' has no header: predict needs the train table's header on line 1", t->path);
        if (C != s->columns && C != s->columns - 1)
            mosaic_fail("'%s' line %d: %d columns, but the train table '%s' has %d (the same names in the same order; "
                        "the label column may be left out)", t->path, t->header_line, C, train_path, s->columns);
        if (C == s->columns - 1) label_column = -1;
        for (int c = 0, k = 0; c < s->columns; c++) { // k: column of t
            if (label_column < 0 && c == s->label_column) continue;
            if (s->names && strcmp(t->header[k], s->names[c]))
                mosaic_fail("'%s' line %d, column %d: named '%.60s' where the train table '%s' has '%.60s' (same names, same order)",
                            t->path, t->header_line, k + 1, t->header[k], train_path, s->names[c]);
            k++;
        }
        for (int j = 0; j < F; j++) {
            const int c = s->feature_column[j];
            source[j] = label_column < 0 && c > s->label_column ? c - 1 : c;
        }
    }
    out->path = strdup(t->path);
    out->rows = N;
    out->features = F;
    out->num_classes = s->num_classes;
    out->class_names = s->class_names;
    out->x = (float*)mallocCheck((size_t)N * F * sizeof(float));
    out->y = (int*)mallocCheck((size_t)N * sizeof(int));
    // labels: a test table whose label cells are all missing has no labels
    int labelled = 0;
    if (label_column >= 0)
        for (int r = 0; r < N; r++) labelled += !csv_is_missing(t->cells[(size_t)r * C + label_column]);
    out->has_labels = labelled > 0;
    for (int r = 0; r < N; r++) {
        out->y[r] = -1;
        if (!out->has_labels) continue;
        const char* cell = t->cells[(size_t)r * C + label_column];
        if (csv_is_missing(cell))
            mosaic_fail("'%s' line %d, %s: the label is missing ('%s'); give every row a label, or none", t->path, t->line[r],
                        csv_column_name(col, sizeof(col), t, label_column), cell);
        out->y[r] = csv_class_of(s, t, r, label_column);
        if (out->y[r] < 0)
            mosaic_fail("'%s' line %d, %s: label '%.40s' is not a class of the train table '%s'", t->path, t->line[r],
                        csv_column_name(col, sizeof(col), t, label_column), cell, train_path);
    }
    // features
    for (int r = 0; r < N; r++)
        for (int j = 0; j < F; j++) {
            const int c = source[j];
            const char* cell = t->cells[(size_t)r * C + c];
            float* dst = out->x + (size_t)r * F + j;
            double v;
            int is_missing = csv_is_missing(cell), unseen = 0;
            if (!is_missing && s->categorical[j]) {
                const int code = csv_find_string(s->categories[j], s->num_categories[j], cell);
                if (code < 0) is_missing = unseen = 1;
                else *dst = (float)code;
            } else if (!is_missing) {
                if (!csv_number_cell(t, r, c, &v))
                    mosaic_fail("'%s' line %d, %s: '%.40s' is not a number, and the column is numeric in the train table '%s'",
                                t->path, t->line[r], csv_column_name(col, sizeof(col), t, c), cell, train_path);
                *dst = (float)v;
            }
            if (!is_missing) continue;
            if (missing == CSV_MISSING_ERROR) {
                if (unseen)
                    mosaic_fail("'%s' line %d, %s: category '%.40s' is not in the train table '%s' (it counts as missing; "
                                "--missing error)", t->path, t->line[r], csv_column_name(col, sizeof(col), t, c), cell, train_path);
                mosaic_fail("'%s' line %d, %s: missing cell ('%s'; --missing error)", t->path, t->line[r],
                            csv_column_name(col, sizeof(col), t, c), cell);
            }
            *dst = s->fill[j];
            out->missing++;
            out->unseen += unseen;
        }
    free(source);
}

static void csv_table_free(CsvTable* table) {
    free(table->x);
    free(table->y);
    free(table->path);
    for (int k = 0; k < table->own.num_classes; k++) free(table->own.class_names[k]); // csv_table_read's copies
    csv_schema_free(&table->own);
    memset(table, 0, sizeof(*table));
}

// The trainer's eval table: header optional, label last, missing cells by the table's own
// column means (one note on stderr, from the rank that reports errors).
static void csv_table_read(CsvTable* table, const char* path) {
    CsvText text;
    csv_text_read(&text, path, CSV_HEADER_AUTO);
    CsvSchema schema;
    csv_schema_build(&schema, &text, NULL);
    csv_table_encode(table, &text, &schema, CSV_MISSING_MEAN, 1, path);
    // the schema's names point into the text: copy the class names the table keeps
    for (int k = 0; k < schema.num_classes; k++) schema.class_names[k] = strdup(schema.class_names[k]);
    for (int j = 0; j < schema.features; j++) { free(schema.categories[j]); schema.categories[j] = NULL; }
    schema.names = NULL;
    table->own = schema;
    table->class_names = schema.class_names;
    if (table->rows < 4) mosaic_fail("'%s' has %d data rows (lines %d-%d); need at least 4 (2 per class for a train/test split)",
                                     path, table->rows, text.line[0], text.line[table->rows - 1]);
    if (table->missing && !mosaic_error_quiet)
        fprintf(stderr, "mosaic: note: '%s': %ld missing cells imputed by their column's mean (categorical: most frequent category)\n",
                path, table->missing);
    csv_text_free(&text);
}

// largest remainder: +1 train row to the classes furthest below their quota (and with a
// test row to spare) until `assigned` reaches n_train; returns the new total
static int split_raise_train_counts(int* ntrain, const double* quota, const int* count, int K, int assigned, int n_train) {
    while (assigned < n_train) {
        int best = -1;
        for (int k = 0; k < K; k++)
            if (count[k] > 0 && ntrain[k] < count[k] - 1 && (best < 0 || quota[k] - ntrain[k] > quota[best] - ntrain[best])) best = k;
        if (best < 0) break;
        ntrain[best]++;
        assigned++;
    }
    return assigned;
}

// Stratified train/test split (like sklearn's train_test_split(stratify=y)) into one dataset:
// rows [0, S) train, [S, R) test, each part in the file's row order.
// test rows total ceil(test_fraction * rows) as in sklearn; the train rows are shared out
// over the classes in proportion to their counts (largest remainder), with every present
// class getting at least 1 train and 1 test row; within a class the rows are picked by a
// seeded shuffle.
static void csv_table_stratified_split(TableBatch* out, const CsvTable* table, float test_fraction, uint64_t seed) {
    const char* path = table->path ? table->path : "(table)";
    if (!(test_fraction > 0.0f && test_fraction < 1.0f)) mosaic_fail("test fraction %g must be in (0, 1)", (double)test_fraction);
    MOSAIC_CHECK(out->max_B >= 1 && out->max_R >= table->rows && out->max_F >= table->features,
                 "allocate the eval batch with table_batch_alloc(&batch, 1, table.rows, table.features)");
    const int N = table->rows, K = table->num_classes;
    int* count = (int*)callocCheck((size_t)K * sizeof(int));     // (K) rows per class
    int* start = (int*)callocCheck((size_t)(K + 1) * sizeof(int)); // (K+1) class buckets in order
    int* order = (int*)mallocCheck((size_t)N * sizeof(int));       // (N) row ids bucketed by class
    int* ntrain = (int*)callocCheck((size_t)K * sizeof(int));    // (K) train rows per class
    double* quota = (double*)callocCheck((size_t)K * sizeof(double));
    char* is_train = (char*)callocCheck((size_t)N);
    for (int r = 0; r < N; r++) count[table->y[r]]++;
    int present = 0;
    for (int k = 0; k < K; k++) {
        if (count[k] == 1)
            mosaic_fail("'%s': class %d has only 1 row (label '%.40s'); a stratified split needs at least 2 rows per class", path, k,
                        table->class_names ? table->class_names[k] : "?");
        present += count[k] > 0;
    }
    // the float's shortest decimal (0.3f -> 0.3), so that 0.3 of 30 rows is 9, not 10
    char decimal[32];
    snprintf(decimal, sizeof(decimal), "%.7g", (double)test_fraction);
    int n_test = (int)ceil(strtod(decimal, NULL) * N - 1e-9);
    int n_train = N - n_test;
    n_train = n_train < present ? present : (n_train > N - present ? N - present : n_train); // 1 train + 1 test per class
    // largest remainder: floor of each quota, then +1 to the largest fractional parts
    int assigned = 0;
    for (int k = 0; k < K; k++) {
        quota[k] = (double)count[k] * n_train / N;
        ntrain[k] = (int)floor(quota[k]);
        assigned += ntrain[k];
    }
    assigned = split_raise_train_counts(ntrain, quota, count, K, assigned, n_train);
    // at least 1 train and 1 test row per class, then restore the total from the classes with room
    for (int k = 0; k < K; k++) {
        if (count[k] == 0) continue;
        if (ntrain[k] < 1) { assigned += 1 - ntrain[k]; ntrain[k] = 1; }
        if (ntrain[k] > count[k] - 1) { assigned -= ntrain[k] - (count[k] - 1); ntrain[k] = count[k] - 1; }
    }
    while (assigned > n_train) {
        int best = -1;
        for (int k = 0; k < K; k++)
            if (ntrain[k] > 1 && (best < 0 || ntrain[k] - quota[k] > ntrain[best] - quota[best])) best = k;
        if (best < 0) break;
        ntrain[best]--;
        assigned--;
    }
    assigned = split_raise_train_counts(ntrain, quota, count, K, assigned, n_train);
    // bucket rows by class (stable), shuffle each bucket, its first ntrain rows are train
    for (int k = 0; k < K; k++) start[k + 1] = start[k] + count[k];
    {
        int* fill = (int*)mallocCheck((size_t)K * sizeof(int));
        memcpy(fill, start, (size_t)K * sizeof(int));
        for (int r = 0; r < N; r++) order[fill[table->y[r]]++] = r;
        free(fill);
    }
    Rng rng;
    rng_seed(&rng, seed);
    for (int k = 0; k < K; k++) {
        int* a = order + start[k];
        for (int i = count[k] - 1; i > 0; i--) { int j = rng_int(&rng, 0, i); int t = a[i]; a[i] = a[j]; a[j] = t; }
        for (int i = 0; i < ntrain[k]; i++) is_train[a[i]] = 1;
    }
    // write: train rows, then test rows, each in file order
    const int F = table->features;
    out->B = 1;
    out->R = N;
    out->F = F;
    int dst = 0;
    for (int pass = 1; pass >= 0; pass--) {
        for (int r = 0; r < N; r++) {
            if (is_train[r] != pass) continue;
            memcpy(out->x + (size_t)dst * F, table->x + (size_t)r * F, (size_t)F * sizeof(float));
            out->y[dst] = (float)table->y[r];
            dst++;
        }
        if (pass == 1) out->S = dst;
    }
    MOSAIC_CHECK(out->S >= 2 && out->S < N, "a split has at least 2 train rows and 1 test row");
    free(count);
    free(start);
    free(order);
    free(ntrain);
    free(quota);
    free(is_train);
}
