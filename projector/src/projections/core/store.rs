//! `impl State`, part 3: write every changed row back (one `UNNEST`
//! statement per table and kind of change).

use sqlx::PgConnection;

use super::rows::State;

impl State {
    /// Writes every changed row back.
    pub(super) async fn store(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.store_users(conn).await?;
        self.store_convs(conn).await?;
        self.store_members(conn).await?;
        self.store_periods(conn).await?;
        self.store_messages(conn).await?;
        self.store_markers(conn).await
    }

    async fn store_users(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut ids, mut names, mut displays, mut emails, mut roles, mut created) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (id, row) in self.users.changes() {
            let Some(u) = row else { continue };
            ids.push(*id);
            names.push(u.username.as_str());
            displays.push(u.display_name.as_str());
            emails.push(u.email.as_str());
            roles.push(u.roles.join(","));
            created.push(u.created_at);
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_users (user_id, username, display_name, email, roles, created_at) \
             SELECT x.id, x.n, x.d, x.e, string_to_array(x.r, ','), x.c \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
               AS x(id, n, d, e, r, c) \
             ON CONFLICT (user_id) DO UPDATE SET username = EXCLUDED.username, \
               display_name = EXCLUDED.display_name, email = EXCLUDED.email, \
               roles = EXCLUDED.roles, created_at = EXCLUDED.created_at",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&displays)
        .bind(&emails)
        .bind(&roles)
        .bind(&created)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_convs(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let mut ids = vec![];
        let (mut kinds, mut titles, mut by, mut created) = (vec![], vec![], vec![], vec![]);
        let (mut last, mut last_msg, mut active) = (vec![], vec![], vec![]);
        for (id, row) in self.convs.changes() {
            let Some(c) = row else { continue };
            ids.push(*id);
            kinds.push(c.kind.as_str());
            titles.push(c.title.as_deref());
            by.push(c.created_by);
            created.push(c.created_at);
            last.push(c.last_seq);
            last_msg.push(c.last_message_seq);
            active.push(c.last_activity_at);
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_conversations (conversation_id, kind, title, created_by, created_at, \
                                           last_seq, last_message_seq, last_activity_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], \
                                  $5::timestamptz[], $6::bigint[], $7::bigint[], $8::timestamptz[]) \
             ON CONFLICT (conversation_id) DO UPDATE SET kind = EXCLUDED.kind, \
               title = EXCLUDED.title, created_by = EXCLUDED.created_by, \
               created_at = EXCLUDED.created_at, last_seq = EXCLUDED.last_seq, \
               last_message_seq = EXCLUDED.last_message_seq, \
               last_activity_at = EXCLUDED.last_activity_at",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&titles)
        .bind(&by)
        .bind(&created)
        .bind(&last)
        .bind(&last_msg)
        .bind(&active)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_members(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut del_c, mut del_u) = (vec![], vec![]);
        let (mut cs, mut us, mut roles, mut seqs, mut ats) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((c, u), row) in self.members.changes() {
            match row {
                None => {
                    del_c.push(*c);
                    del_u.push(*u);
                }
                Some(m) => {
                    cs.push(*c);
                    us.push(*u);
                    roles.push(m.role.as_str());
                    seqs.push(m.joined_seq);
                    ats.push(m.joined_at);
                }
            }
        }
        if !del_c.is_empty() {
            sqlx::query(
                "DELETE FROM rm_members m USING UNNEST($1::uuid[], $2::uuid[]) AS x(c, u) \
                 WHERE m.conversation_id = x.c AND m.user_id = x.u",
            )
            .bind(&del_c)
            .bind(&del_u)
            .execute(&mut *conn)
            .await?;
        }
        if !cs.is_empty() {
            sqlx::query(
                "INSERT INTO rm_members (conversation_id, user_id, role, joined_seq, joined_at) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[]) \
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = EXCLUDED.role, \
                   joined_seq = EXCLUDED.joined_seq, joined_at = EXCLUDED.joined_at",
            )
            .bind(&cs)
            .bind(&us)
            .bind(&roles)
            .bind(&seqs)
            .bind(&ats)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn store_periods(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        if self.periods.is_empty() {
            return Ok(());
        }
        let (mut cs, mut us, mut joined, mut left) = (vec![], vec![], vec![], vec![]);
        for ((c, u, j), l) in &self.periods {
            cs.push(*c);
            us.push(*u);
            joined.push(*j);
            left.push(*l);
        }
        sqlx::query(
            "INSERT INTO rm_member_periods (conversation_id, user_id, joined_seq, left_seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
             ON CONFLICT (conversation_id, user_id, joined_seq) DO UPDATE \
             SET left_seq = COALESCE(EXCLUDED.left_seq, rm_member_periods.left_seq)",
        )
        .bind(&cs)
        .bind(&us)
        .bind(&joined)
        .bind(&left)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_messages(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let mut new = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        let mut old = (vec![], vec![], vec![], vec![], vec![]);
        for ((c, id), row) in self.messages.changes() {
            let Some(m) = row else { continue };
            if m.new {
                new.0.push(*c);
                new.1.push(m.seq);
                new.2.push(*id);
                new.3.push(m.sender_id);
                new.4.push(m.client_msg_id.as_str());
                new.5.push(m.body.as_deref());
                new.6.push(m.sent_at);
                new.7.push(m.edited_at);
                new.8.push(m.deleted);
            } else {
                old.0.push(*c);
                old.1.push(*id);
                old.2.push(m.body.as_deref());
                old.3.push(m.edited_at);
                old.4.push(m.deleted);
            }
        }
        if !new.0.is_empty() {
            sqlx::query(
                "INSERT INTO rm_messages (conversation_id, seq, message_id, sender_id, client_msg_id, \
                                          body, sent_at, edited_at, deleted) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[], \
                                      $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bool[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&new.0)
            .bind(&new.1)
            .bind(&new.2)
            .bind(&new.3)
            .bind(&new.4)
            .bind(&new.5)
            .bind(&new.6)
            .bind(&new.7)
            .bind(&new.8)
            .execute(&mut *conn)
            .await?;
        }
        if !old.0.is_empty() {
            sqlx::query(
                "UPDATE rm_messages m SET body = x.b, edited_at = x.e, deleted = x.d \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::bool[]) \
                   AS x(c, id, b, e, d) \
                 WHERE m.conversation_id = x.c AND m.message_id = x.id",
            )
            .bind(&old.0)
            .bind(&old.1)
            .bind(&old.2)
            .bind(&old.3)
            .bind(&old.4)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn store_markers(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let (mut cs, mut us, mut seqs) = (vec![], vec![], vec![]);
        for ((c, u), seq) in self.markers.changes() {
            let Some(seq) = seq else { continue };
            cs.push(*c);
            us.push(*u);
            seqs.push(*seq);
        }
        if cs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_read_markers (conversation_id, user_id, seq) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[]) \
             ON CONFLICT (conversation_id, user_id) DO UPDATE \
             SET seq = GREATEST(rm_read_markers.seq, EXCLUDED.seq)",
        )
        .bind(&cs)
        .bind(&us)
        .bind(&seqs)
        .execute(conn)
        .await?;
        Ok(())
    }
}
