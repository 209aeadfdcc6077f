//! The kinds of legacy transactions the workload runs, and how often each runs.
//!
//! The mix is modelled on an LLMOps product: executions are logged constantly,
//! templates are edited often (mostly metadata, sometimes the body), structure changes
//! (new labs, flows, moved libraries) are occasional and a whole lab is deleted rarely.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnKind {
    /// Log 1–4 executions of a template, with or without a variable collection.
    InsertExecutions,
    /// A new lab with libraries, templates, variables and collections.
    CreateLab,
    /// Rename a lab or change its tenant (sometimes to NULL).
    UpdateLab,
    /// Template name/version/is_archived/parameters; the body is left alone, so
    /// pgoutput sends it as an unchanged-TOAST placeholder.
    UpdateTemplateMeta,
    /// Replace a template's body (new TOASTed value).
    UpdateTemplateContent,
    /// Move a library to another lab (foreign key change).
    MoveLibrary,
    /// Copy a template and its variables with `parent_template_id` set (self reference).
    ForkTemplate,
    /// A new flow with steps.
    CreateFlow,
    /// Delete, append, move to the end (primary key change) or swap flow steps.
    ChangeFlowSteps,
    /// Start a flow execution or move one along pending → running → succeeded/failed/cancelled.
    RunFlow,
    /// Add a variable to a template; a duplicate name is a unique violation (skipped).
    AddVariable,
    DeleteVariable,
    /// Replace a collection's variables jsonb.
    UpdateCollection,
    DeleteExecution,
    /// Delete a lab; everything under it goes with it (ON DELETE CASCADE / SET NULL).
    DeleteLab,
}

impl TxnKind {
    pub const ALL: [TxnKind; 15] = [
        TxnKind::InsertExecutions,
        TxnKind::CreateLab,
        TxnKind::UpdateLab,
        TxnKind::UpdateTemplateMeta,
        TxnKind::UpdateTemplateContent,
        TxnKind::MoveLibrary,
        TxnKind::ForkTemplate,
        TxnKind::CreateFlow,
        TxnKind::ChangeFlowSteps,
        TxnKind::RunFlow,
        TxnKind::AddVariable,
        TxnKind::DeleteVariable,
        TxnKind::UpdateCollection,
        TxnKind::DeleteExecution,
        TxnKind::DeleteLab,
    ];

    /// Relative frequency, in percent of all transactions.
    pub fn weight(self) -> u32 {
        match self {
            TxnKind::InsertExecutions => 34,
            TxnKind::CreateLab => 4,
            TxnKind::UpdateLab => 2,
            TxnKind::UpdateTemplateMeta => 12,
            TxnKind::UpdateTemplateContent => 5,
            TxnKind::MoveLibrary => 2,
            TxnKind::ForkTemplate => 4,
            TxnKind::CreateFlow => 4,
            TxnKind::ChangeFlowSteps => 5,
            TxnKind::RunFlow => 14,
            TxnKind::AddVariable => 3,
            TxnKind::DeleteVariable => 3,
            TxnKind::UpdateCollection => 3,
            TxnKind::DeleteExecution => 4,
            TxnKind::DeleteLab => 1,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnKind::InsertExecutions => "insert_executions",
            TxnKind::CreateLab => "create_lab",
            TxnKind::UpdateLab => "update_lab",
            TxnKind::UpdateTemplateMeta => "update_template_meta",
            TxnKind::UpdateTemplateContent => "update_template_content",
            TxnKind::MoveLibrary => "move_library",
            TxnKind::ForkTemplate => "fork_template",
            TxnKind::CreateFlow => "create_flow",
            TxnKind::ChangeFlowSteps => "change_flow_steps",
            TxnKind::RunFlow => "run_flow",
            TxnKind::AddVariable => "add_variable",
            TxnKind::DeleteVariable => "delete_variable",
            TxnKind::UpdateCollection => "update_collection",
            TxnKind::DeleteExecution => "delete_execution",
            TxnKind::DeleteLab => "delete_lab",
        }
    }
}

impl fmt::Display for TxnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_percentages_and_indexes_match() {
        assert_eq!(TxnKind::ALL.iter().map(|k| k.weight()).sum::<u32>(), 100);
        for (i, k) in TxnKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(TxnKind::DeleteLab.weight(), 1);
    }
}
