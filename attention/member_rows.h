// Where the rows of every member of an all-to-all group sit in the virtual table of the
// problems it owns (attention/row_a2a.h). Shared by the CPU and CUDA a2a leaf ops.
#pragma once
#include "../model/common.h"

enum { A2A_MAX_MEMBERS = 1024 };

typedef struct {
    int count;                   // members
    int rows[A2A_MAX_MEMBERS];   // rows member m holds: its train rows, then its test rows
    int train[A2A_MAX_MEMBERS];  // of which train rows
    int vtrain[A2A_MAX_MEMBERS]; // virtual row of its first train row
    int vtest[A2A_MAX_MEMBERS];  // virtual row of its first test row
} MemberRows;

// virtual row of member m's local row r
MOSAIC_HOST_DEVICE static inline int member_vrow(const MemberRows* mr, int m, int r) {
    return r < mr->train[m] ? mr->vtrain[m] + r : mr->vtest[m] + (r - mr->train[m]);
}
